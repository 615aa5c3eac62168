//! The shell's meta commands (`.help` lists them): the catalog (`.tables`, `.schema`,
//! `.indexes`, `.dump`), output settings, the cluster (`.status`, `.nodes`, `.leader`,
//! `.remove`), `.read`
//! and, in `raftsql demo`, `.demo`.

use crate::shell::{parse_consistency, quote_ident, sql_literal, Flow, Format, Shell};
use raftsql_client::{pb, Consistency, QueryOptions};
use serde_json::json;
use std::io::Write;
use std::time::Duration;

pub const HELP: &str = "\
SQL statements end with ';' (they may span lines). Meta commands:
  .tables                    list tables
  .schema [TABLE]            CREATE statements of every table (or one) and its indexes
  .indexes [TABLE]           list indexes
  .dump [TABLE]              SQL that recreates the schema and the data
  .mode [table|csv|json|line]  output mode (no argument: show it)
  .timer on|off              print each statement's elapsed time
  .receipts on|off           print the receipt of each result: node, role, term, index, level
  .consistency [LEVEL]       read level: strong, ryw, bounded DURATION (e.g. bounded 500ms), any
  .status [ADDR]             a node's role, term, leader, log/commit/applied/snapshot index and,
                             from the leader, every follower's matched index and lag
  .nodes                     membership with roles and reachability
  .leader                    which node leads, in which term
  .remove ID [--force]       remove node ID from the cluster (then stop its process; to bring
                             it back, wipe its data dir and join it under a new id); refused
                             if most remaining voters do not answer, unless --force
  .transfer [ID]             move leadership to node ID (default: the most caught-up voter);
                             writes pause for about a round trip
  .read FILE                 run SQL and commands from FILE
  .help                      this text
  .quit                      exit (also Ctrl-D)";

/// One row of `sqlite_schema`.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub kind: String,
    pub name: String,
    pub table: String,
    pub sql: Option<String>,
}

impl CatalogEntry {
    fn user_index(&self) -> bool {
        self.kind == "index" && self.sql.is_some() && !self.name.starts_with("autoindex_")
    }
}

const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

fn on_off(arg: Option<&&str>) -> Option<bool> {
    match arg.map(|a| a.to_ascii_lowercase()) {
        Some(a) if a == "on" || a == "1" || a == "yes" => Some(true),
        Some(a) if a == "off" || a == "0" || a == "no" => Some(false),
        _ => None,
    }
}

fn level_name(c: Consistency) -> String {
    match c {
        Consistency::Strong => "strong".into(),
        Consistency::ReadYourWrites => "ryw".into(),
        Consistency::Any => "any".into(),
        Consistency::Bounded(d) => format!("bounded {}ms", d.as_millis()),
    }
}

fn role_name(s: &pb::StatusResponse) -> String {
    s.role().as_str_name().to_ascii_lowercase()
}

impl Shell {
    /// Runs one meta command line (starting with `.`).
    pub async fn run_command(&mut self, line: &str) -> Flow {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(cmd) = words.first() else { return Flow::Continue };
        let args = &words[1..];
        let result: Result<(), String> = match *cmd {
            ".quit" | ".exit" | ".q" => return Flow::Quit,
            ".help" | ".h" => {
                let _ = writeln!(self.out, "{HELP}");
                if let Some(demo) = &self.demo {
                    let _ = writeln!(self.out, "{}", demo.help());
                }
                Ok(())
            }
            ".tables" => self.tables(args.first().copied()).await,
            ".schema" => self.schema(args.first().copied()).await,
            ".indexes" | ".indices" => self.indexes(args.first().copied()).await,
            ".dump" => self.dump(args.first().copied()).await,
            ".mode" => match args.first() {
                None => {
                    let _ = writeln!(self.out, "mode: {}", self.format.name());
                    Ok(())
                }
                Some(m) => match Format::parse(m) {
                    Some(f) => {
                        self.format = f;
                        Ok(())
                    }
                    None => Err(format!("unknown mode {m:?}: use table, csv, json or line")),
                },
            },
            ".timer" => match on_off(args.first()) {
                Some(b) => {
                    self.timer = b;
                    Ok(())
                }
                None => Err("usage: .timer on|off".into()),
            },
            ".receipts" => match on_off(args.first()) {
                Some(b) => {
                    self.receipts = b;
                    Ok(())
                }
                None => Err("usage: .receipts on|off".into()),
            },
            ".consistency" => {
                if args.is_empty() {
                    let _ = writeln!(self.out, "consistency: {}", level_name(self.consistency));
                    Ok(())
                } else {
                    let spec = if args[0].eq_ignore_ascii_case("bounded") && args.len() == 2 {
                        format!("bounded:{}", args[1])
                    } else {
                        args.join("")
                    };
                    parse_consistency(&spec).map(|c| {
                        self.consistency = c;
                    })
                }
            }
            ".status" => self.status(args.first().copied()).await,
            ".nodes" => self.nodes().await,
            ".leader" => self.leader().await,
            ".remove" => match args {
                [id] | [id, "--force"] => match id.parse::<u64>() {
                    Ok(id) => self.remove(id, args.len() == 2).await,
                    Err(_) => Err(format!("bad node id {id:?}: usage: .remove ID [--force]")),
                },
                _ => Err("usage: .remove ID [--force]".into()),
            },
            ".transfer" => match args {
                [] => self.transfer(None).await,
                [id] => match id.parse::<u64>() {
                    Ok(id) => self.transfer(Some(id)).await,
                    Err(_) => Err(format!("bad node id {id:?}: usage: .transfer [ID]")),
                },
                _ => Err("usage: .transfer [ID]".into()),
            },
            ".read" => match args.first() {
                None => Err("usage: .read FILE".into()),
                Some(_) if self.read_depth >= 16 => Err(".read nested too deeply".into()),
                Some(_) => {
                    let path = line.trim()[".read".len()..].trim().trim_matches(['\'', '"']).to_string();
                    match std::fs::read_to_string(&path) {
                        Err(e) => Err(format!("cannot read {path}: {e}")),
                        Ok(text) => {
                            self.read_depth += 1;
                            let flow = Box::pin(self.run_script(&text)).await;
                            self.read_depth -= 1;
                            if flow == Flow::Quit {
                                return Flow::Quit;
                            }
                            Ok(())
                        }
                    }
                }
            },
            ".demo" => match self.demo.clone() {
                Some(demo) => demo.run(self, args).await,
                None => Err(".demo commands work in `raftsql demo` only".into()),
            },
            other => Err(format!("unknown command {other}: try .help")),
        };
        if let Err(e) = result {
            self.error(format!("error: {e}"));
        }
        let _ = self.out.flush();
        Flow::Continue
    }

    /// The catalog, from `sqlite_schema`.
    pub async fn catalog(&self) -> Result<Vec<CatalogEntry>, String> {
        let opts = QueryOptions { consistency: self.consistency, ..Default::default() };
        let r = self
            .session
            .query("SELECT type, name, tbl_name, sql FROM sqlite_schema", &[], opts)
            .await
            .map_err(|e| format!("reading the catalog: {e}"))?;
        let text = |v: &raftsql_client::Value| match v {
            raftsql_client::Value::Text(s) => Some(s.clone()),
            _ => None,
        };
        Ok(r.rows
            .iter()
            .map(|row| CatalogEntry {
                kind: row.first().and_then(text).unwrap_or_default(),
                name: row.get(1).and_then(text).unwrap_or_default(),
                table: row.get(2).and_then(text).unwrap_or_default(),
                sql: row.get(3).and_then(text),
            })
            .collect())
    }

    fn check_table(entries: &[CatalogEntry], table: Option<&str>) -> Result<(), String> {
        match table {
            Some(t) if !entries.iter().any(|e| e.kind == "table" && e.name.eq_ignore_ascii_case(t)) => {
                Err(format!("no such table: {t}"))
            }
            _ => Ok(()),
        }
    }

    async fn tables(&mut self, pattern: Option<&str>) -> Result<(), String> {
        let entries = self.catalog().await?;
        for e in entries.iter().filter(|e| e.kind == "table") {
            if pattern.is_none_or(|p| e.name.eq_ignore_ascii_case(p)) {
                let _ = writeln!(self.out, "{}", e.name);
            }
        }
        Ok(())
    }

    async fn schema(&mut self, table: Option<&str>) -> Result<(), String> {
        let entries = self.catalog().await?;
        Self::check_table(&entries, table)?;
        let wanted = |e: &CatalogEntry| table.is_none_or(|t| e.table.eq_ignore_ascii_case(t));
        for e in entries.iter().filter(|e| e.kind == "table" && wanted(e)) {
            if let Some(sql) = &e.sql {
                let _ = writeln!(self.out, "{sql};");
            }
            for i in entries.iter().filter(|i| i.user_index() && i.table == e.name) {
                let _ = writeln!(self.out, "{};", i.sql.as_deref().unwrap_or_default());
            }
        }
        Ok(())
    }

    async fn indexes(&mut self, table: Option<&str>) -> Result<(), String> {
        let entries = self.catalog().await?;
        Self::check_table(&entries, table)?;
        for e in entries.iter().filter(|e| e.kind == "index") {
            if table.is_none_or(|t| e.table.eq_ignore_ascii_case(t)) {
                let _ = writeln!(self.out, "{}", e.name);
            }
        }
        Ok(())
    }

    /// SQL that recreates the schema and the data: every table's CREATE TABLE and one INSERT
    /// per row, then the CREATE INDEX statements.
    async fn dump(&mut self, table: Option<&str>) -> Result<(), String> {
        let entries = self.catalog().await?;
        Self::check_table(&entries, table)?;
        let wanted = |e: &CatalogEntry| table.is_none_or(|t| e.table.eq_ignore_ascii_case(t));
        let opts = QueryOptions { consistency: self.consistency, ..Default::default() };
        let _ = writeln!(self.out, "-- raftsql dump");
        for e in entries.iter().filter(|e| e.kind == "table" && wanted(e)) {
            let Some(sql) = &e.sql else { continue };
            let _ = writeln!(self.out, "{sql};");
            let name = quote_ident(&e.name);
            let r = self
                .session
                .query(&format!("SELECT * FROM {name}"), &[], opts.clone())
                .await
                .map_err(|err| format!("reading {}: {err}", e.name))?;
            for row in &r.rows {
                let values: Vec<String> = row.iter().map(sql_literal).collect();
                let _ = writeln!(self.out, "INSERT INTO {name} VALUES ({});", values.join(", "));
            }
        }
        for e in entries.iter().filter(|e| e.user_index() && wanted(e)) {
            let _ = writeln!(self.out, "{};", e.sql.as_deref().unwrap_or_default());
        }
        Ok(())
    }

    async fn status_of(&self, addr: &str) -> Result<pb::StatusResponse, String> {
        match tokio::time::timeout(STATUS_TIMEOUT * 2, self.client.status(addr)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 2 s".into()),
        }
    }

    /// Every address this shell knows: the ones it was given plus, in a demo, every node.
    fn known_addrs(&self) -> Vec<String> {
        let mut addrs: Vec<String> = self.client.addrs().to_vec();
        if let Some(demo) = &self.demo {
            for a in demo.addrs() {
                if !addrs.contains(&a) {
                    addrs.push(a);
                }
            }
        }
        addrs
    }

    /// The first node that answers, preferring the one believed to lead.
    async fn some_status(&self) -> Result<pb::StatusResponse, String> {
        let mut addrs = self.known_addrs();
        if let Some(l) = self.client.cached_leader() {
            addrs.retain(|a| *a != l);
            addrs.insert(0, l);
        }
        let mut last = String::from("no address");
        for a in &addrs {
            match self.status_of(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = format!("{a}: {e}"),
            }
        }
        Err(format!("no node answers ({last})"))
    }

    pub(crate) async fn leader_status(&self) -> Result<pb::StatusResponse, String> {
        let s = self.some_status().await?;
        if s.role() == pb::Role::Leader {
            return Ok(s);
        }
        if s.leader_addr.is_empty() {
            return Err(format!("node {} knows no leader (term {})", s.node_id, s.term));
        }
        let l = self.status_of(&s.leader_addr).await?;
        if l.role() != pb::Role::Leader {
            return Err(format!("node {} at {} no longer leads", l.node_id, s.leader_addr));
        }
        Ok(l)
    }

    async fn status(&mut self, addr: Option<&str>) -> Result<(), String> {
        let s = match addr {
            Some(a) => self.status_of(a).await.map_err(|e| format!("{a}: {e}"))?,
            None => self.some_status().await?,
        };
        let leader = if s.role() == pb::Role::Leader {
            Some(s.clone())
        } else if !s.leader_addr.is_empty() {
            self.status_of(&s.leader_addr).await.ok().filter(|l| l.role() == pb::Role::Leader)
        } else {
            None
        };
        let addr_of = |id: u64| {
            s.members.iter().find(|m| m.id == id).map(|m| m.addr.clone()).unwrap_or_else(|| "?".into())
        };
        if self.format == Format::Json {
            let followers: Vec<serde_json::Value> = leader
                .iter()
                .flat_map(|l| &l.followers)
                .map(|f| {
                    json!({"id": f.id, "addr": addr_of(f.id),
                        "matched_index": if f.has_matched { json!(f.matched_index) } else { json!(null) },
                        "lag": f.lag, "lag_millis": f.lag_millis})
                })
                .collect();
            let obj = json!({"node": s.node_id, "addr": s.addr, "peer_addr": s.peer_addr, "role": role_name(&s), "term": s.term,
                "leader": {"id": s.leader_id, "addr": s.leader_addr},
                "last_log_index": s.last_log_index, "committed_index": s.committed_index,
                "applied_index": s.applied_index, "snapshot_index": s.snapshot_index,
                "purged_index": s.purged_index,
                "millis_since_quorum_ack": leader.as_ref().map(|l| l.millis_since_quorum_ack),
                "watchdog_stalls": s.watchdog_stalls, "stalled": s.stalled,
                "auth_failures": s.auth_failures, "tls_handshake_failures": s.tls_handshake_failures,
                "followers": followers});
            let _ = writeln!(self.out, "{obj}");
            return Ok(());
        }
        let o = &mut self.out;
        let _ = writeln!(o, "node {} at {}: {}, term {}", s.node_id, s.addr, role_name(&s), s.term);
        let _ = match s.leader_id {
            0 => writeln!(o, "  leader:     none known"),
            id => writeln!(o, "  leader:     node {id} at {}", s.leader_addr),
        };
        let _ = writeln!(
            o,
            "  log:        last index {}, committed {}, applied {}",
            s.last_log_index, s.committed_index, s.applied_index
        );
        let _ = writeln!(o, "  snapshot:   index {}, log purged up to {}", s.snapshot_index, s.purged_index);
        let _ = writeln!(o, "  members:    {}", members_text(&s.members));
        if !s.stalled.is_empty() {
            let _ = writeln!(
                o,
                "  STALLED:    {} (see the node's log for the watchdog's dump)",
                s.stalled.join("; ")
            );
        }
        if s.watchdog_stalls > 0 {
            let _ = writeln!(o, "  watchdog:   {} stall(s) since the node started", s.watchdog_stalls);
        }
        if s.auth_failures > 0 || s.tls_handshake_failures > 0 {
            let _ = writeln!(
                o,
                "  refused:    {} failed authentication(s), {} failed TLS handshake(s) since the node started",
                s.auth_failures, s.tls_handshake_failures
            );
        }
        if let Some(l) = leader {
            let _ = writeln!(
                o,
                "replication (from leader node {}, last log index {}; a quorum acknowledged it {} ms ago):",
                l.node_id, l.last_log_index, l.millis_since_quorum_ack
            );
            let _ = writeln!(
                o,
                "  {:<5} {:<21} {:>9} {:>13} {:>10}",
                "node", "address", "matched", "lag (entries)", "lag (ms)"
            );
            for f in &l.followers {
                let matched = if f.has_matched { f.matched_index.to_string() } else { "-".into() };
                let _ = writeln!(
                    o,
                    "  {:<5} {:<21} {:>9} {:>13} {:>10}",
                    f.id,
                    addr_of(f.id),
                    matched,
                    f.lag,
                    f.lag_millis
                );
            }
        } else {
            let _ = writeln!(o, "replication: no reachable leader");
        }
        Ok(())
    }

    async fn nodes(&mut self) -> Result<(), String> {
        let any = self.some_status().await.ok();
        let mut rows: Vec<(Option<u64>, String, &str)> = Vec::new();
        if let Some(s) = &any {
            for m in &s.members {
                rows.push((Some(m.id), m.addr.clone(), if m.voter { "voter" } else { "learner" }));
            }
        }
        for a in self.known_addrs() {
            if !rows.iter().any(|(_, addr, _)| *addr == a) {
                rows.push((None, a, "-"));
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (_, addr, _)) in rows.iter().enumerate() {
            let client = self.client.clone();
            let addr = addr.clone();
            tasks.spawn(async move { (i, tokio::time::timeout(STATUS_TIMEOUT, client.status(&addr)).await) });
        }
        let mut answers = vec![None; rows.len()];
        while let Some(Ok((i, r))) = tasks.join_next().await {
            answers[i] = match r {
                Ok(Ok(s)) => Some(Ok(s)),
                Ok(Err(e)) => Some(Err(e.code().to_string())),
                Err(_) => Some(Err("timeout".to_string())),
            };
        }
        if self.format == Format::Json {
            for ((id, addr, member), a) in rows.iter().zip(answers) {
                let obj = match a {
                    Some(Ok(s)) => json!({"id": s.node_id, "addr": addr, "member": member, "reachable": true,
                        "role": role_name(&s), "term": s.term, "applied_index": s.applied_index}),
                    _ => json!({"id": id, "addr": addr, "member": member, "reachable": false}),
                };
                let _ = writeln!(self.out, "{obj}");
            }
            return Ok(());
        }
        let o = &mut self.out;
        let _ = writeln!(
            o,
            "{:<5} {:<21} {:<8} {:<10} {:>5} {:>8}  reachable",
            "node", "address", "member", "role", "term", "applied"
        );
        for ((id, addr, member), a) in rows.iter().zip(answers) {
            let id = id.map_or("?".to_string(), |i| i.to_string());
            let _ = match a {
                Some(Ok(s)) => writeln!(
                    o,
                    "{id:<5} {addr:<21} {member:<8} {:<10} {:>5} {:>8}  yes",
                    role_name(&s),
                    s.term,
                    s.applied_index
                ),
                Some(Err(e)) => {
                    writeln!(o, "{id:<5} {addr:<21} {member:<8} {:<10} {:>5} {:>8}  no ({e})", "-", "-", "-")
                }
                None => writeln!(o, "{id:<5} {addr:<21} {member:<8} -  no"),
            };
        }
        Ok(())
    }

    async fn transfer(&mut self, target: Option<u64>) -> Result<(), String> {
        let (leader, term) = self.client.transfer_leader(target).await.map_err(|e| e.to_string())?;
        let _ = writeln!(self.out, "node {leader} leads now, in term {term}");
        Ok(())
    }

    async fn remove(&mut self, id: u64, force: bool) -> Result<(), String> {
        let removed = match force {
            false => self.client.remove_member(id).await,
            true => self.client.remove_member_forced(id).await,
        };
        let s = removed.map_err(|e| e.to_string())?;
        let _ = writeln!(
            self.out,
            "removed node {id} (by node {}, term {}); members now: {}",
            s.node_id,
            s.term,
            members_text(&s.members)
        );
        let _ = writeln!(
            self.out,
            "stop node {id}'s process and do not restart it on its data dir; to bring it back, wipe the \
             data dir and join it under a new id"
        );
        Ok(())
    }

    async fn leader(&mut self) -> Result<(), String> {
        let l = self.leader_status().await?;
        let _ = writeln!(self.out, "node {} at {} leads term {}", l.node_id, l.addr, l.term);
        Ok(())
    }
}

fn members_text(members: &[pb::Member]) -> String {
    members
        .iter()
        .map(|m| {
            let peer = if m.peer_addr.is_empty() || m.peer_addr == m.addr {
                String::new()
            } else {
                format!(" (peers: {})", m.peer_addr)
            };
            format!("{}={}{peer}{}", m.id, m.addr, if m.voter { "" } else { " (learner)" })
        })
        .collect::<Vec<_>>()
        .join(", ")
}
