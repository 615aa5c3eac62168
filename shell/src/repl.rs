//! The interactive prompt: line editing and persistent history (rustyline), statements that
//! span lines until their `;`, meta commands, Ctrl-C to cancel the current input or the running
//! statement, Ctrl-D to leave.
//!
//! History lives in `~/.raftsql_history`, or in the file named by `RAFTSQL_HISTORY` (an empty
//! value disables it).

use crate::shell::{input_complete, Flow, Shell};
use rustyline::error::ReadlineError;
use rustyline::history::{FileHistory, History};
use rustyline::{Config, Editor};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The terminal settings from before the prompt took over, for [`restore_terminal`].
static SAVED_TERMIOS: Mutex<Option<libc::termios>> = Mutex::new(None);

fn save_terminal() {
    // SAFETY: tcgetattr writes a termios into the zeroed struct we own.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) == 0 {
            *SAVED_TERMIOS.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        }
    }
}

/// Puts the terminal back as it was before the prompt (for exits from a signal handler while
/// the line editor holds the terminal in raw mode).
pub fn restore_terminal() {
    if let Some(t) = *SAVED_TERMIOS.lock().unwrap_or_else(|e| e.into_inner()) {
        // SAFETY: tcsetattr reads the termios saved from the same fd.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &t);
        }
    }
}

/// The history file: `RAFTSQL_HISTORY`, else `~/.raftsql_history`; `None` when disabled.
pub fn history_path() -> Option<PathBuf> {
    match std::env::var_os("RAFTSQL_HISTORY") {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(PathBuf::from(p)),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".raftsql_history")),
    }
}

/// Whether the line editor shows the prompt (SIGINTs then are not counted).
static AT_PROMPT: AtomicBool = AtomicBool::new(false);
/// SIGINTs delivered while no prompt was up.
static INTERRUPTS: AtomicU64 = AtomicU64::new(0);

fn install_sigint_counter() -> std::io::Result<()> {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let r = INSTALLED.get_or_init(|| {
        // SAFETY: the action only loads and adds to atomics, which is async-signal-safe.
        unsafe {
            signal_hook_registry::register(libc::SIGINT, || {
                if !AT_PROMPT.load(Ordering::SeqCst) {
                    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
                }
            })
        }
        .map(|_| ())
        .map_err(|e| e.to_string())
    });
    r.clone().map_err(|e| std::io::Error::other(format!("cannot handle SIGINT: {e}")))
}

/// Runs the prompt until `.quit` or Ctrl-D.
///
/// SIGINT, as in bash, psql and sqlite3, never ends an interactive shell: while a statement
/// runs it cancels the statement; at the prompt it does nothing (a Ctrl-C typed there is read by
/// the line editor as a key and drops the input being typed). A SIGINT cannot tell whether it
/// came from the keyboard or from `kill`, and around each prompt there is a window in which the
/// terminal is in cooked mode while the prompt is still (or already) shown: deciding by "who
/// sent it" raced with that window and ended the shell on a Ctrl-C typed just after Enter.
/// SIGTERM and SIGHUP end it; the demo cleans up on them.
pub async fn run(shell: &mut Shell) -> anyhow::Result<()> {
    save_terminal();
    let config =
        Config::builder().auto_add_history(false).history_ignore_dups(true)?.max_history_size(5000)?.build();
    let mut rl: Editor<(), FileHistory> = Editor::with_config(config)?;
    let history = history_path();
    if let Some(p) = &history {
        let _ = rl.load_history(p);
    }

    // Ctrl-C raises SIGINT while a statement runs (the terminal is in cooked mode): count it,
    // and the running statement is dropped. One that lands while the prompt is up is not
    // counted, so it cannot cancel the next statement before it starts. The count is taken in
    // the signal handler itself, at delivery: a task woken later could see the prompt already
    // gone and cancel a statement typed after the signal.
    install_sigint_counter()?;
    let cancel = Arc::new(Notify::new());
    {
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let cancel = cancel.clone();
        tokio::spawn(async move {
            while sigint.recv().await.is_some() {
                cancel.notify_waiters();
            }
        });
    }
    let (at_prompt, interrupts) = (&AT_PROMPT, &INTERRUPTS);
    let interrupted = |seen: u64| {
        let cancel = cancel.clone();
        async move {
            loop {
                let notified = cancel.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if interrupts.load(Ordering::SeqCst) > seen {
                    return;
                }
                notified.await;
            }
        }
    };

    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() { "raftsql> " } else { "   ...> " };
        at_prompt.store(true, Ordering::SeqCst);
        // After the store: a SIGINT from before it is in `seen`, one from after is not counted.
        let seen = interrupts.load(Ordering::SeqCst);
        let line = tokio::task::block_in_place(|| rl.readline(prompt));
        at_prompt.store(false, Ordering::SeqCst);
        let line = match line {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => {
                buffer.clear(); // Ctrl-C: drop the statement being typed
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let is_command = buffer.is_empty() && line.trim_start().starts_with('.');
        if !is_command {
            if buffer.is_empty() && line.trim().is_empty() {
                continue;
            }
            buffer.push_str(&line);
            buffer.push('\n');
            if !input_complete(&buffer) {
                continue;
            }
        }
        let entry = if is_command { line.trim().to_string() } else { buffer.trim_end().replace('\n', " ") };
        if rl.history_mut().add(&entry).unwrap_or(false) {
            if let Some(p) = &history {
                let _ = rl.save_history(p);
            }
        }
        let flow = if is_command {
            tokio::select! {
                f = shell.run_command(line.trim()) => Some(f),
                _ = interrupted(seen) => None,
            }
        } else {
            let text = std::mem::take(&mut buffer);
            tokio::select! {
                _ = shell.run_sql(&text) => Some(Flow::Continue),
                _ = interrupted(seen) => None,
            }
        };
        match flow {
            Some(Flow::Quit) => break,
            Some(Flow::Continue) => {}
            None => {
                let _ = shell.out.flush();
                eprintln!("cancelled (a write already sent may still commit)");
            }
        }
    }
    let _ = std::io::stdout().flush();
    Ok(())
}
