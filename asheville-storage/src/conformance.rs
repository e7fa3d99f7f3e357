//! The backend conformance suite: plain `async fn`s taking `&dyn Backend`,
//! public so that any implementation (ours or an application's) can run
//! them. Each panics with a clear message on a violation.
//!
//! The backend must be empty (or at least hold nothing under `conf/`).

use bytes::Bytes;

use crate::backend::Backend;
use crate::error::ErrorKind;

/// Runs every check.
pub async fn run_all(b: &dyn Backend) {
    put_get_round_trip(b).await;
    multipart_payload_and_overwrite(b).await;
    unsynced_puts_read_back_and_sync(b).await;
    ranges(b).await;
    missing_objects(b).await;
    delete_is_idempotent(b).await;
    list_prefix_and_pagination(b).await;
    prepared_prefixes_hold_no_objects_and_take_puts(b).await;
    made_objects_read_back_whole(b).await;
}

/// put then get / head return the same bytes and size; empty objects work.
pub async fn put_get_round_trip(b: &dyn Backend) {
    let data = Bytes::from(
        (0..100_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    b.put("conf/rt/a", vec![data.clone()]).await.expect("put");
    assert_eq!(
        b.get("conf/rt/a").await.expect("get"),
        data,
        "{}: get differs from put",
        b.name()
    );
    assert_eq!(
        b.head("conf/rt/a").await.expect("head").size,
        data.len() as u64
    );
    b.put("conf/rt/empty", vec![]).await.expect("put empty");
    assert_eq!(b.get("conf/rt/empty").await.expect("get empty").len(), 0);
}

/// A payload in several parts is stored concatenated; a second put replaces.
pub async fn multipart_payload_and_overwrite(b: &dyn Backend) {
    let parts = vec![
        Bytes::from_static(b"head-"),
        Bytes::from_static(b"body-"),
        Bytes::from_static(b"tail"),
    ];
    b.put("conf/mp/x", parts).await.expect("put parts");
    assert_eq!(
        &b.get("conf/mp/x").await.expect("get")[..],
        b"head-body-tail"
    );
    b.put("conf/mp/x", vec![Bytes::from_static(b"new")])
        .await
        .expect("overwrite");
    assert_eq!(&b.get("conf/mp/x").await.expect("get")[..], b"new");
}

/// Objects stored with `put_unsynced` read back like any other, before
/// and after `sync`; syncing them (and syncing nothing) succeeds.
pub async fn unsynced_puts_read_back_and_sync(b: &dyn Backend) {
    let keys = ["conf/us/a".to_owned(), "conf/us/deeper/b".to_owned()];
    for (i, k) in keys.iter().enumerate() {
        b.put_unsynced(
            k,
            vec![
                Bytes::from_static(b"unsynced-"),
                Bytes::from(vec![i as u8; 5000]),
            ],
        )
        .await
        .expect("put_unsynced");
    }
    assert_eq!(
        &b.get(&keys[1]).await.expect("get before sync")[..9],
        b"unsynced-",
        "{}: an unsynced object reads back",
        b.name()
    );
    b.sync(&keys).await.expect("sync");
    b.sync(&[]).await.expect("sync of nothing");
    for (i, k) in keys.iter().enumerate() {
        let got = b.get(k).await.expect("get after sync");
        assert_eq!(got.len(), 9 + 5000, "{}: {k}", b.name());
        assert!(got[9..].iter().all(|&x| x == i as u8), "{}: {k}", b.name());
    }
}

/// Ranges return exactly the bytes asked for; bad ranges are errors.
pub async fn ranges(b: &dyn Backend) {
    let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    b.put("conf/rg/r", vec![Bytes::from(data.clone())])
        .await
        .expect("put");
    for (lo, hi) in [
        (0u64, 1u64),
        (0, 10_000),
        (5, 6),
        (4_000, 9_999),
        (9_999, 10_000),
    ] {
        let got = b.get_range("conf/rg/r", lo..hi).await.expect("range");
        assert_eq!(
            &got[..],
            &data[lo as usize..hi as usize],
            "{}: range {lo}..{hi}",
            b.name()
        );
    }
    let e = b
        .get_range("conf/rg/r", 9_000..10_001)
        .await
        .expect_err("past the end");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{}: {e}", b.name());
    let e = b
        .get_range("conf/rg/r", 5..5)
        .await
        .expect_err("empty range");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

/// Missing objects are `NotFound` for get, get_range and head.
pub async fn missing_objects(b: &dyn Backend) {
    assert_eq!(
        b.get("conf/none/x").await.expect_err("get").kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        b.get_range("conf/none/x", 0..1)
            .await
            .expect_err("range")
            .kind(),
        ErrorKind::NotFound
    );
    let e = b.head("conf/none/x").await.expect_err("head");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(
        e.context_value("backend"),
        Some(b.name()),
        "errors name the backend"
    );
}

/// Delete removes; deleting again (or something never there) succeeds.
pub async fn delete_is_idempotent(b: &dyn Backend) {
    b.put("conf/del/x", vec![Bytes::from_static(b"1")])
        .await
        .expect("put");
    b.delete("conf/del/x").await.expect("delete");
    assert_eq!(
        b.head("conf/del/x").await.expect_err("gone").kind(),
        ErrorKind::NotFound
    );
    b.delete("conf/del/x").await.expect("delete again");
    b.delete("conf/del/never").await.expect("delete missing");
}

/// Listing filters by string prefix, is sorted, and pages with `after`.
pub async fn list_prefix_and_pagination(b: &dyn Backend) {
    let mut keys: Vec<String> = (0..25).map(|i| format!("conf/ls/p{:02}", i)).collect();
    keys.push("conf/ls/q/deep".into());
    keys.push("conf/lsx/other".into());
    for k in &keys {
        b.put(k, vec![Bytes::from(k.clone())]).await.expect("put");
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = b
            .list("conf/ls/", after.as_deref(), 10)
            .await
            .expect("list");
        assert!(page.objects.len() <= 10);
        pages += 1;
        seen.extend(page.objects.iter().map(|o| o.key.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    let mut expect: Vec<String> = keys
        .iter()
        .filter(|k| k.starts_with("conf/ls/"))
        .cloned()
        .collect();
    expect.sort();
    assert_eq!(seen, expect, "{}: listing", b.name());
    assert_eq!(pages, 3);
    let p = b.list("conf/ls/p1", None, 100).await.expect("list p1");
    assert_eq!(
        p.objects.len(),
        10,
        "{}: string prefix, not only whole segments",
        b.name()
    );
    assert_eq!(p.objects[0].size, "conf/ls/p10".len() as u64);
}

/// `prepare` succeeds, twice too; the prefixes it was told of list no
/// objects, and objects put under them read and list as any other.
pub async fn prepared_prefixes_hold_no_objects_and_take_puts(b: &dyn Backend) {
    let prefixes = ["conf/pp/00".to_owned(), "conf/pp/ff".to_owned()];
    b.prepare(&prefixes).await.expect("prepare");
    b.prepare(&prefixes).await.expect("prepare again");
    let listed = b.list("conf/pp/", None, 10).await.expect("list");
    assert!(
        listed.objects.is_empty(),
        "{}: prepared prefixes list no objects: {:?}",
        b.name(),
        listed.objects
    );
    b.put_unsynced("conf/pp/ff/x", vec![Bytes::from_static(b"shard")])
        .await
        .expect("put under a prepared prefix");
    b.sync(&["conf/pp/ff/x".to_owned()]).await.expect("sync");
    assert_eq!(&b.get("conf/pp/ff/x").await.expect("get")[..], b"shard");
    let listed = b.list("conf/pp/", None, 10).await.expect("list");
    let keys: Vec<&str> = listed.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["conf/pp/ff/x"], "{}", b.name());
}

/// An object made as it is written (`put_unsynced_made`) reads back, once
/// synced, as its head followed by its body: empty, within one block,
/// across the first block's end, and across several write buffers.
pub async fn made_objects_read_back_whole(b: &dyn Backend) {
    for (i, body) in [0usize, 1, 4040, 4041, 1_100_000].into_iter().enumerate() {
        let key = format!("conf/made/{i}");
        b.put_unsynced_made(&key, Box::new(Pattern::new(56, body)))
            .await
            .expect("put made");
        b.sync(std::slice::from_ref(&key)).await.expect("sync");
        assert_eq!(
            b.get(&key).await.expect("get made"),
            Pattern::new(56, body).expected(),
            "{}: a made object of {body} body bytes differs",
            b.name()
        );
    }
}

/// A made object for the checks: its body a byte pattern, its head a sum
/// of the body (so it is only right once the whole body was made, in
/// order); fails to make past `fail_after` body bytes if set.
pub(crate) struct Pattern {
    head_len: usize,
    body_len: usize,
    made: usize,
    sum: u64,
    pub(crate) fail_after: Option<usize>,
}

impl Pattern {
    pub(crate) fn new(head_len: usize, body_len: usize) -> Self {
        Pattern {
            head_len,
            body_len,
            made: 0,
            sum: 0,
            fail_after: None,
        }
    }

    fn byte(i: usize) -> u8 {
        (i * 7 % 251) as u8
    }

    fn head_of(&self, sum: u64) -> Vec<u8> {
        sum.to_le_bytes()
            .iter()
            .copied()
            .cycle()
            .take(self.head_len)
            .collect()
    }

    /// The whole object, as a made one must read back.
    pub(crate) fn expected(&self) -> Vec<u8> {
        let body: Vec<u8> = (0..self.body_len).map(Self::byte).collect();
        let sum = body
            .iter()
            .fold(0u64, |s, &b| s.wrapping_mul(31).wrapping_add(u64::from(b)));
        let mut all = self.head_of(sum);
        all.extend_from_slice(&body);
        all
    }
}

impl crate::backend::MadeObject for Pattern {
    fn head_len(&self) -> usize {
        self.head_len
    }

    fn body_len(&self) -> usize {
        self.body_len
    }

    fn make(&mut self, out: &mut [u8]) -> crate::error::Result<()> {
        if self.made + out.len() > self.body_len
            || self.fail_after.is_some_and(|f| self.made + out.len() > f)
        {
            return Err(crate::error::Error::new(
                ErrorKind::Other,
                "pattern: made past its end",
            ));
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = Self::byte(self.made + i);
            self.sum = self.sum.wrapping_mul(31).wrapping_add(u64::from(*o));
        }
        self.made += out.len();
        Ok(())
    }

    fn head(&mut self) -> crate::error::Result<Vec<u8>> {
        if self.made != self.body_len {
            return Err(crate::error::Error::new(
                ErrorKind::Other,
                "pattern: not wholly made",
            ));
        }
        Ok(self.head_of(self.sum))
    }
}
