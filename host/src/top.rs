//! `condo top`: a live terminal view of the host and its guests, like
//! virt-top: the host's CPU utilization and commitments, then one row per
//! guest (state, vCPUs, memory, CPU %, RSS, touched RAM, disk and network
//! rates), busiest first. Refreshed every interval from the daemon's API;
//! `q` or Esc quits. `--once` prints one frame as text.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::manager::{GuestInfo, HostReport};

/// One frame's data, with rates computed against the previous frame.
struct Frame {
    host: HostReport,
    rows: Vec<[String; 9]>,
}

#[derive(Default)]
struct Rates {
    prev: HashMap<String, (Instant, u64, u64, u64, u64)>,
}

fn mib(b: u64) -> String {
    format!("{:.1}M", b as f64 / (1u64 << 20) as f64)
}

fn rate(bytes: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return "-".into();
    }
    let r = bytes as f64 / secs;
    if r >= (1 << 20) as f64 {
        format!("{:.1}M/s", r / (1 << 20) as f64)
    } else {
        format!("{:.0}K/s", r / 1024.0)
    }
}

impl Rates {
    fn frame(&mut self, c: &Client) -> Result<Frame> {
        let host: HostReport = c.get("/host")?;
        let mut guests: Vec<GuestInfo> = c.get("/guests")?;
        guests.sort_by(|a, b| {
            let cpu = |g: &GuestInfo| g.stats.map_or(-1.0, |s| s.cpu_pct);
            cpu(b).total_cmp(&cpu(a)).then(a.name.cmp(&b.name))
        });
        let now = Instant::now();
        let mut rows = Vec::new();
        for g in guests {
            let (cpu, rss, touched, disk, net) = match g.stats {
                Some(s) => {
                    let (dr, dw, rx, tx) = match self.prev.get(&g.name) {
                        Some((t, a, b, c2, d)) => {
                            let secs = now.duration_since(*t).as_secs_f64();
                            (
                                rate(s.disk_read_bytes.saturating_sub(*a), secs),
                                rate(s.disk_write_bytes.saturating_sub(*b), secs),
                                rate(s.net_rx_bytes.saturating_sub(*c2), secs),
                                rate(s.net_tx_bytes.saturating_sub(*d), secs),
                            )
                        }
                        None => ("-".into(), "-".into(), "-".into(), "-".into()),
                    };
                    self.prev.insert(
                        g.name.clone(),
                        (
                            now,
                            s.disk_read_bytes,
                            s.disk_write_bytes,
                            s.net_rx_bytes,
                            s.net_tx_bytes,
                        ),
                    );
                    (
                        format!("{:.1}", s.cpu_pct),
                        mib(s.rss_bytes),
                        mib(s.touched_bytes),
                        format!("{dr} {dw}"),
                        format!("{rx} {tx}"),
                    )
                }
                None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
            };
            rows.push([
                g.name,
                g.state.to_string(),
                g.vcpus.to_string(),
                format!("{}M", g.memory_mib),
                cpu,
                rss,
                touched,
                disk,
                net,
            ]);
        }
        Ok(Frame { host, rows })
    }
}

const HEADER: [&str; 9] = [
    "NAME",
    "STATE",
    "VCPUS",
    "MEMORY",
    "CPU%",
    "RSS",
    "TOUCHED",
    "DISK R W",
    "NET RX TX",
];

fn summary(h: &HostReport) -> String {
    format!(
        "host: {} CPUs, {:.1}% used by guests | {} guests, {} running | committed {} vCPUs (x{}), {} of {} MiB (x{}) | guest RSS {} MiB, available {} MiB",
        h.cpus,
        h.cpu_utilization_pct,
        h.guests,
        h.running,
        h.committed_vcpus,
        h.cpu_overcommit,
        h.committed_memory_mib,
        h.memory_mib,
        h.memory_overcommit,
        h.guest_rss_mib,
        h.memory_available_mib
    )
}

/// Runs the view (or prints one frame with `once`).
pub fn run(c: &Client, interval: f64, once: bool) -> Result<u8> {
    if !(0.1..=3600.0).contains(&interval) {
        return Err(Error::invalid("--interval: between 0.1 and 3600 seconds"));
    }
    let mut rates = Rates::default();
    if once {
        let f = rates.frame(c)?;
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{}", summary(&f.host));
        let _ = writeln!(
            o,
            "{:<20} {:<9} {:>5} {:>7} {:>6} {:>8} {:>8} {:>16} {:>16}",
            HEADER[0],
            HEADER[1],
            HEADER[2],
            HEADER[3],
            HEADER[4],
            HEADER[5],
            HEADER[6],
            HEADER[7],
            HEADER[8]
        );
        for r in f.rows {
            let _ = writeln!(
                o,
                "{:<20} {:<9} {:>5} {:>7} {:>6} {:>8} {:>8} {:>16} {:>16}",
                r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]
            );
        }
        return Ok(0);
    }
    let mut term = ratatui::try_init().map_err(|e| Error::Other(format!("terminal: {e}")))?;
    let result = (|| -> Result<()> {
        let every = Duration::from_secs_f64(interval);
        loop {
            let f = rates.frame(c)?;
            term.draw(|fr| {
                let [top, body] =
                    Layout::vertical([Constraint::Length(3), Constraint::Min(0)]).areas(fr.area());
                fr.render_widget(
                    Paragraph::new(Line::from(summary(&f.host))).block(
                        Block::default()
                            .borders(Borders::ALL)
                            .title(" condo top (q quits) "),
                    ),
                    top,
                );
                let rows = f.rows.iter().map(|r| Row::new(r.iter().cloned()));
                let widths = [
                    Constraint::Min(12),
                    Constraint::Length(9),
                    Constraint::Length(5),
                    Constraint::Length(7),
                    Constraint::Length(6),
                    Constraint::Length(8),
                    Constraint::Length(8),
                    Constraint::Length(16),
                    Constraint::Length(16),
                ];
                fr.render_widget(
                    Table::new(rows, widths)
                        .header(
                            Row::new(HEADER).style(Style::default().add_modifier(Modifier::BOLD)),
                        )
                        .block(Block::default().borders(Borders::ALL).title(" guests ")),
                    body,
                );
            })
            .map_err(|e| Error::Other(format!("terminal: {e}")))?;
            let t0 = Instant::now();
            while t0.elapsed() < every {
                let left = every.saturating_sub(t0.elapsed());
                if event::poll(left).map_err(|e| Error::Other(format!("terminal: {e}")))? {
                    if let Event::Key(k) =
                        event::read().map_err(|e| Error::Other(format!("terminal: {e}")))?
                    {
                        if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                            return Ok(());
                        }
                    }
                }
            }
        }
    })();
    ratatui::restore();
    result.map(|()| 0)
}
