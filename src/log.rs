//! The library's log: one process-wide sink, by default stderr for warnings and errors. The C ABI
//! replaces the sink with the host's callback (`xdan_set_log_callback`).
//!
//! Inside the crate: `crate::log::info!("loaded {} tensors", n)` (also `error!`, `warning!`,
//! `debug!`); the message is formatted only if the sink wants that level.

use std::sync::{Arc, RwLock};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// Writes one message of a level.
pub type WriteFn = Box<dyn Fn(Level, &str) + Send + Sync>;

/// Where messages go, and up to which level (`Debug` = everything).
pub struct Sink {
    pub max_level: Level,
    pub write: WriteFn,
}

static SINK: RwLock<Option<Arc<Sink>>> = RwLock::new(None);

fn default_sink() -> Arc<Sink> {
    Arc::new(Sink {
        max_level: Level::Warn,
        write: Box::new(|level, msg| eprintln!("xdan {}: {msg}", level.name())),
    })
}

/// Installs `sink`; `None` restores the default (stderr, warnings and errors).
pub fn set_sink(sink: Option<Sink>) {
    let sink = sink.map(Arc::new);
    *SINK.write().unwrap_or_else(|e| e.into_inner()) = sink;
}

fn current() -> Arc<Sink> {
    // Cloned out of the lock so a sink that logs, or installs another sink, cannot deadlock.
    let guard = SINK.read().unwrap_or_else(|e| e.into_inner());
    guard.clone().unwrap_or_else(default_sink)
}

/// Whether a message of `level` would be written (to skip building expensive ones).
pub fn enabled(level: Level) -> bool {
    level <= current().max_level
}

/// Writes one message (no trailing newline needed).
pub fn write(level: Level, args: std::fmt::Arguments<'_>) {
    let sink = current();
    if level <= sink.max_level {
        (sink.write)(level, &args.to_string());
    }
}

#[allow(unused_macros)]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($arg)*)) };
}
#[allow(unused_macros)]
macro_rules! warning {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*)) };
}
#[allow(unused_macros)]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) };
}
#[allow(unused_macros)]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($arg)*)) };
}
#[allow(unused_imports)]
pub(crate) use {debug, error, info, warning};

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn messages_reach_the_installed_sink_up_to_its_level() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        set_sink(Some(Sink {
            max_level: Level::Info,
            write: Box::new(move |l, m| g.lock().unwrap().push((l, m.to_string()))),
        }));
        info!("loaded {} tensors", 3);
        debug!("not shown");
        warning!("careful");
        assert!(enabled(Level::Info) && !enabled(Level::Debug));
        set_sink(None);
        assert!(!enabled(Level::Info) && enabled(Level::Warn));
        let got = got.lock().unwrap();
        assert_eq!(
            *got,
            vec![(Level::Info, "loaded 3 tensors".to_string()), (Level::Warn, "careful".to_string())]
        );
    }
}
