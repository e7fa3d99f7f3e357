//! Asheville's shells: the reference HTTP server ([`http`]) and the
//! `asheville` command-line tool (`src/bin/asheville/`), which also runs
//! the server as `asheville serve`.

pub mod http;

/// The kernel's transparent huge page mode: the contents of
/// `/sys/kernel/mm/transparent_hugepage/enabled` (empty where there is no
/// such file).
fn thp_mode() -> String {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default()
}

/// The `GLIBC_TUNABLES` this process's environment and kernel call for:
/// [`huge_page_tunables`] of `$GLIBC_TUNABLES` and the kernel's THP mode,
/// or `None` when `ASHEVILLE_NO_HUGE_PAGES` is set or nothing is to change.
/// The `asheville` CLI runs itself again with them (restores everywhere,
/// other commands unless [`free_page_reporting`]); the repo bench gives
/// them to its runs.
pub fn huge_page_env() -> Option<std::ffi::OsString> {
    if std::env::var_os("ASHEVILLE_NO_HUGE_PAGES").is_some() {
        return None;
    }
    huge_page_tunables(std::env::var_os("GLIBC_TUNABLES").as_deref(), &thp_mode())
}

/// Whether this kernel reports the memory it frees to a hypervisor, which
/// takes it back (a virtio balloon with free page reporting, as on this
/// project's VMs).
///
/// The kernel reports free blocks of 2 MiB and more that stayed free for
/// ~2 s, and a huge page is such a block: a process asking for huge pages
/// a while after memory was last freed mostly gets ones the host has to
/// fault in again, where small pages mostly come from memory that was
/// never handed back. On such a VM, CLI puts of the peers set with the
/// data read just before (as `benches/peers` does) took 2.13-2.66 s with
/// huge pages and 1.81-2.09 s without (5 alternating rounds, each pair
/// faster without; system CPU 1.01-1.55 against 0.76-0.86 s), and one put
/// right after another 1.61-2.18 against 1.67-1.86 s (4 rounds). Restores
/// went both ways: 5 s after `drop_caches` 2.03-2.18 s with huge pages
/// against 1.31-1.63 s without (3 rounds), but `rs(4,2)` restores after a
/// `sync` only 1.68-2.80 against 1.97-3.42 s (4 rounds, each pair faster
/// with), and the repo bench's get (right after its put, in the same
/// process) 526-723 against 450-619 MB/s (3 rounds, each faster with); so
/// the CLI keeps them for `get`.
pub fn free_page_reporting() -> bool {
    let Ok(devices) = std::fs::read_dir("/sys/bus/virtio/devices") else {
        return false;
    };
    devices.flatten().any(|d| {
        let read = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap_or_default();
        read("device").trim() == VIRTIO_ID_BALLOON && balloon_reports_free_pages(&read("features"))
    })
}

/// The virtio device id of a memory balloon, as sysfs shows it.
const VIRTIO_ID_BALLOON: &str = "0x0005";

/// Whether a virtio balloon's negotiated features (sysfs's `features`: one
/// `0` or `1` per feature bit, bit 0 first) include free page reporting
/// (`VIRTIO_BALLOON_F_REPORTING`, bit 5).
fn balloon_reports_free_pages(features: &str) -> bool {
    features.as_bytes().get(5) == Some(&b'1')
}

/// The `GLIBC_TUNABLES` a process should run with so that glibc's
/// malloc asks for transparent huge pages (`glibc.malloc.hugetlb=1`: it
/// `madvise`s the memory it maps and the heap it grows), given the
/// variable's current value and the kernel's THP mode (the contents of
/// `/sys/kernel/mm/transparent_hugepage/enabled`); `None` when there is
/// nothing to change: huge pages are given only where asked for
/// (`[madvise]`, the common default) and the variable does not already
/// say how malloc should use them.
pub fn huge_page_tunables(
    current: Option<&std::ffi::OsStr>,
    thp_mode: &str,
) -> Option<std::ffi::OsString> {
    const TUNABLE: &str = "glibc.malloc.hugetlb=1";
    if !thp_mode.contains("[madvise]") {
        return None;
    }
    match current {
        None => Some(TUNABLE.into()),
        Some(v) if v.is_empty() => Some(TUNABLE.into()),
        Some(v) if v.to_string_lossy().contains("glibc.malloc.hugetlb") => None,
        Some(v) => {
            let mut out = v.to_os_string();
            out.push(":");
            out.push(TUNABLE);
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{balloon_reports_free_pages, huge_page_tunables};
    use std::ffi::OsStr;

    #[test]
    fn free_page_reporting_is_bit_5_of_a_balloons_features() {
        // This project's VM: must-tell-host off, stats, deflate on OOM,
        // reporting, and bit 7.
        assert!(balloon_reports_free_pages(
            "0110010100000000000000000000000010000000"
        ));
        assert!(!balloon_reports_free_pages(
            "0110000100000000000000000000000010000000"
        ));
        assert!(!balloon_reports_free_pages("01100"));
        assert!(!balloon_reports_free_pages(""));
    }

    #[test]
    fn huge_pages_are_asked_for_only_where_the_kernel_gives_them_on_request() {
        let madvise = "always [madvise] never\n";
        assert_eq!(
            huge_page_tunables(None, madvise).as_deref(),
            Some(OsStr::new("glibc.malloc.hugetlb=1"))
        );
        assert_eq!(
            huge_page_tunables(Some(OsStr::new("")), madvise).as_deref(),
            Some(OsStr::new("glibc.malloc.hugetlb=1"))
        );
        // The user's own tunables stay, ours follow.
        assert_eq!(
            huge_page_tunables(Some(OsStr::new("glibc.malloc.arena_max=2")), madvise).as_deref(),
            Some(OsStr::new(
                "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
            ))
        );
        // Already said (by us after the exec, or by the user, either way):
        // nothing to do, so the exec happens at most once.
        for said in [
            "glibc.malloc.hugetlb=1",
            "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2",
        ] {
            assert_eq!(huge_page_tunables(Some(OsStr::new(said)), madvise), None);
        }
        // Huge pages always or never: asking changes nothing.
        assert_eq!(huge_page_tunables(None, "[always] madvise never\n"), None);
        assert_eq!(huge_page_tunables(None, "always madvise [never]\n"), None);
        assert_eq!(huge_page_tunables(None, ""), None);
    }
}
