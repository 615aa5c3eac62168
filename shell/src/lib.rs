//! The `raftsql` shell: a SQL prompt and scripts against a cluster (`shell`, `meta`, `repl`),
//! `raftsql demo` (a local cluster of real server processes, `demo`) and `raftsql bench`
//! (`bench`). Built on the client library (`raftsql-client`), which a program that only wants
//! to talk to raftsql uses alone, without the shell's terminal dependencies.
//!
//! Layers, each importing only those before it: `shell` (core) ← `meta` ← `repl` ← `demo`;
//! `bench` uses the core. `demo` reaches the lower layers through `shell::DemoCommands`.

pub mod bench;
pub mod demo;
pub mod meta;
pub mod repl;
pub mod shell;
