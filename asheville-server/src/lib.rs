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
/// The `asheville` CLI runs itself again with them; the repo bench gives
/// them to its runs.
pub fn huge_page_env() -> Option<std::ffi::OsString> {
    if std::env::var_os("ASHEVILLE_NO_HUGE_PAGES").is_some() {
        return None;
    }
    huge_page_tunables(std::env::var_os("GLIBC_TUNABLES").as_deref(), &thp_mode())
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
    use super::huge_page_tunables;
    use std::ffi::OsStr;

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
