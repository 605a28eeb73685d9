//! The I/O layer's settings: the `BERTH_IO_*` environment switches and numbers, checked at
//! start-up ([`check_settings`]); which engine serves upload data ([`engine_name`]); and the
//! allocator's tuning for this process.

use super::buffers::DIRECT_LARGE_MAX;
use super::uring;

/// The io_uring ring, when that engine serves (decided once, at first use).
pub(super) fn ring() -> Option<&'static uring::Ring> {
    static RING: std::sync::OnceLock<Option<uring::Ring>> = std::sync::OnceLock::new();
    RING.get_or_init(|| {
        if std::env::var("BERTH_IO_ENGINE").is_ok_and(|v| v == "std") {
            tracing::info!("io engine: std (BERTH_IO_ENGINE=std)");
            return None;
        }
        match uring::Ring::start() {
            Ok(r) => {
                tracing::info!("io engine: io_uring");
                Some(r)
            }
            Err(e) => {
                tracing::warn!(error = %e, "io_uring is not usable here; the std engine (file calls on a thread pool) serves instead");
                None
            }
        }
    })
    .as_ref()
}

/// Which engine serves upload data: `"io_uring"` or `"std"` (starts the ring on first call).
pub fn engine_name() -> &'static str {
    if ring().is_some() { "io_uring" } else { "std" }
}

/// The `BERTH_IO_*` settings and the values each accepts ([`check_settings`]).
const SETTINGS: [(&str, &[&str]); 6] = [
    ("BERTH_IO_ENGINE", &["uring", "std"]),
    ("BERTH_IO_WRITEBACK", &["on", "off"]),
    ("BERTH_IO_MMAP", &["on", "off"]),
    ("BERTH_IO_DIRECT", &["on", "off"]),
    ("BERTH_IO_SENDFILE", &["on", "off"]),
    ("BERTH_IO_HASH_PAIRS", &["on", "off"]),
];

/// Check the `BERTH_IO_*` environment: an error that names the first setting with a value it
/// does not accept, and the values it does (start-up stops on it).
pub fn check_settings() -> Result<(), String> {
    for (var, allowed) in SETTINGS {
        if let Ok(v) = std::env::var(var)
            && !allowed.contains(&v.as_str())
        {
            return Err(format!(
                "{var}={v:?} is not one of {}: unset it or set one of those",
                allowed.join(", ")
            ));
        }
    }
    large_buffers_from_env()?;
    hash_threads_setting(std::env::var(HASH_THREADS_VAR).ok().as_deref()).map(|_| ())
}

/// The setting of the number of hashing threads ([`hash_pool`](super::hash_pool::hash_pool)).
pub(super) const HASH_THREADS_VAR: &str = "BERTH_IO_HASH_THREADS";
/// Most hashing threads it may ask for.
const HASH_THREADS_LIMIT: usize = 256;

/// The number of hashing threads a value of [`HASH_THREADS_VAR`] asks for (one a core when
/// unset), or an error naming the setting and what it accepts.
pub(super) fn hash_threads_setting(value: Option<&str>) -> Result<usize, String> {
    let Some(v) = value else {
        return Ok(std::thread::available_parallelism().map_or(2, |n| n.get()));
    };
    match v.trim().parse::<usize>() {
        Ok(n) if (1..=HASH_THREADS_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!(
            "{HASH_THREADS_VAR}={v:?} is not a number of threads from 1 to {HASH_THREADS_LIMIT}: \
             unset it (default: one a core) or set one"
        )),
    }
}

/// The setting of [`large_buffers`].
const LARGE_BUFFERS_VAR: &str = "BERTH_IO_LARGE_BUFFERS";
/// Most large buffers [`LARGE_BUFFERS_VAR`] may ask for: 4 GiB of them.
const LARGE_BUFFERS_LIMIT: usize = 4096;

/// The number of large direct-write buffers a value of [`LARGE_BUFFERS_VAR`] asks for
/// ([`DIRECT_LARGE_MAX`] when unset), or an error naming the setting and what it accepts.
fn large_buffers_setting(value: Option<&str>) -> Result<usize, String> {
    let Some(v) = value else {
        return Ok(DIRECT_LARGE_MAX);
    };
    match v.trim().parse::<usize>() {
        Ok(n) if n <= LARGE_BUFFERS_LIMIT => Ok(n),
        _ => Err(format!(
            "{LARGE_BUFFERS_VAR}={v:?} is not a number of 1 MiB buffers from 0 to {LARGE_BUFFERS_LIMIT}: \
             unset it (default {DIRECT_LARGE_MAX}) or set one"
        )),
    }
}

/// What [`LARGE_BUFFERS_VAR`] in the environment asks for ([`large_buffers_setting`]).
fn large_buffers_from_env() -> Result<usize, String> {
    large_buffers_setting(std::env::var(LARGE_BUFFERS_VAR).ok().as_deref())
}

/// Most large direct-write buffers in existence at once: [`DIRECT_LARGE_MAX`] unless
/// `BERTH_IO_LARGE_BUFFERS` says otherwise (checked at start-up by [`check_settings`]).
pub(super) fn large_buffers() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| large_buffers_from_env().unwrap_or(DIRECT_LARGE_MAX))
}

/// An on/off setting of the environment, read once: on unless set to `off`. They exist to
/// measure what each mechanism changes (docs/performance.md).
pub(crate) struct Switch {
    var: &'static str,
    on: std::sync::OnceLock<bool>,
}

impl Switch {
    const fn new(var: &'static str) -> Switch {
        Switch {
            var,
            on: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn on(&self) -> bool {
        *self
            .on
            .get_or_init(|| std::env::var(self.var).map_or(true, |v| v != "off"))
    }
}

/// Early writeback of buffered upload data.
pub(super) static WRITEBACK: Switch = Switch::new("BERTH_IO_WRITEBACK");
/// Upload data written with `O_DIRECT`.
pub(super) static DIRECT: Switch = Switch::new("BERTH_IO_DIRECT");
/// Large ranges served from memory maps (else by reads).
pub(super) static MMAP: Switch = Switch::new("BERTH_IO_MMAP");
/// Memory-mapped blob bytes sent to plaintext sockets with `sendfile` ([`sendfile`](super::sendfile)).
pub(super) static SENDFILE: Switch = Switch::new("BERTH_IO_SENDFILE");
/// Buffers of two uploads hashed side by side ([`sha256x2`](crate::digest::sha256x2)).
pub(crate) static HASH_PAIRS: Switch = Switch::new("BERTH_IO_HASH_PAIRS");

/// Turn transparent huge pages off for this process (`PR_SET_THP_DISABLE`); call before the
/// first large allocation. The allocator asks for huge pages on its segments, and a segment
/// with a few live buffers then holds whole 2 MiB pages: 64 concurrent 16 MiB pushes peaked at
/// 94 MiB with them and 62 MiB without, at the same rate (docs/performance.md).
#[allow(unsafe_code)]
pub fn disable_huge_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory of this
    // process; it only sets a flag on the process's address space that later faults read.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// How long, in milliseconds, the allocator keeps memory freed by the process before it returns
/// it to the system, unless `MIMALLOC_PURGE_DELAY` in the environment says otherwise.
/// mimalloc 3 waits a second by default, so the buffers of uploads that just ended still count
/// while the next ones fill theirs: 64 concurrent 16 MiB pushes peaked at 87–89 MiB with the
/// default and 78–80 MiB with 10 ms, at the same rate and the same small-request rate
/// (docs/performance.md).
pub const ALLOCATOR_PURGE_DELAY_MS: std::os::raw::c_long = 10;

/// Set the allocator's purge delay to [`ALLOCATOR_PURGE_DELAY_MS`] (a default: a
/// `MIMALLOC_PURGE_DELAY` in the environment, read by the allocator when the process starts,
/// wins). Call early; the delay applies to memory freed from then on.
#[allow(unsafe_code)]
pub fn tune_allocator() {
    // Read first, so that a value from the environment is in place before the default is set.
    let _ = allocator_purge_delay_ms();
    // SAFETY: mi_option_set_default only stores an integer in the allocator's option table (an
    // option index in range and a plain value); it touches no memory the program owns.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) }
}

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (the same in mimalloc 2 and 3; the Rust
/// bindings do not name it). A test checks it against `MIMALLOC_PURGE_DELAY`.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The allocator's purge delay in force, in milliseconds.
#[allow(unsafe_code)]
pub fn allocator_purge_delay_ms() -> std::os::raw::c_long {
    // SAFETY: mi_option_get reads an integer from the allocator's option table; the index is in
    // range.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The allocator's purge delay becomes ours, unless the environment set one; and the option
    /// read and set is the one `MIMALLOC_PURGE_DELAY` sets (checked in a child process, since the
    /// allocator reads its environment once).
    #[test]
    fn the_allocator_returns_freed_memory_within_the_set_delay() {
        tune_allocator();
        if let Ok(v) = std::env::var("MIMALLOC_PURGE_DELAY") {
            assert_eq!(allocator_purge_delay_ms().to_string(), v.trim());
        } else {
            assert_eq!(allocator_purge_delay_ms(), ALLOCATOR_PURGE_DELAY_MS);
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "io::settings::tests::the_allocator_returns_freed_memory_within_the_set_delay",
                ])
                .env("MIMALLOC_PURGE_DELAY", "250")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
            assert!(text.contains("1 passed"), "{text}");
        }
    }

    #[test]
    fn large_buffers_setting_is_checked() {
        assert_eq!(large_buffers_setting(None), Ok(DIRECT_LARGE_MAX));
        assert_eq!(large_buffers_setting(Some("256")), Ok(256));
        assert_eq!(large_buffers_setting(Some("0")), Ok(0));
        assert_eq!(large_buffers_setting(Some("4096")), Ok(4096));
        for bad in ["4097", "-1", "16MiB", ""] {
            let e = large_buffers_setting(Some(bad)).unwrap_err();
            assert!(
                e.starts_with(&format!("BERTH_IO_LARGE_BUFFERS={bad:?} is not a number")) && e.contains("default 16"),
                "{e}"
            );
        }
    }

    #[test]
    fn hash_threads_setting_is_checked() {
        assert!(hash_threads_setting(None).is_ok_and(|n| n >= 1));
        assert_eq!(hash_threads_setting(Some("1")), Ok(1));
        assert_eq!(hash_threads_setting(Some(" 8 ")), Ok(8));
        for bad in ["0", "257", "-1", "two", ""] {
            let e = hash_threads_setting(Some(bad)).unwrap_err();
            assert!(
                e.starts_with(&format!("BERTH_IO_HASH_THREADS={bad:?} is not a number")),
                "{e}"
            );
        }
    }
}
