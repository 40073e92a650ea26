//! The guest agent as the VM backend uses it (`agent::client`, see
//! `docs/agent.md`): waiting for it to answer while the VM boots, the
//! container setup made from the bundle's configuration, and each process
//! on a connection of its own, its standard streams (or terminal) relayed
//! between the engine's descriptors and the agent.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::client::{Client, ClientError, Event, Session, SessionInput};
use agent::spec as aspec;

use crate::error::{Error, Result};
use crate::guest::{Io, Workload};
use crate::spec::{Process, Spec};

/// Largest host file given to the guest inline (the agent's limit).
const MAX_INLINE: u64 = aspec::MAX_INLINE_FILE as u64;

fn agent_error(what: &str) -> impl FnOnce(ClientError) -> Error + '_ {
    move |e| Error::Guest(format!("{what}: {e}"))
}

/// The container setup the agent gets once per VM: the root disk, the
/// hostname, and the bundle's mounts as a guest can have them (host files
/// such as /etc/hosts inline; host directories cannot cross into a VM and
/// are left out, except /dev/shm, which becomes the guest's own tmpfs).
pub fn container_setup(spec: &Spec) -> Result<(aspec::ContainerSetup, Vec<String>)> {
    let mut mounts = Vec::new();
    let mut dropped = Vec::new();
    let mut inline_total = 0u64;
    for m in &spec.mounts {
        let bind = m.kind.as_deref() == Some("bind")
            || m.options.iter().any(|o| o == "bind" || o == "rbind");
        // The guest has no cgroups of its own (the VM is the container's
        // cgroup, on the host); podman's mount of them lies under a
        // read-only /sys, where its mount point cannot even be made.
        if matches!(m.kind.as_deref(), Some("cgroup" | "cgroup2")) {
            dropped.push(m.destination.clone());
            continue;
        }
        let mut am = aspec::Mount {
            destination: m.destination.clone(),
            kind: m.kind.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
            content: None,
        };
        if bind {
            let src = m.source.as_deref().unwrap_or("");
            let meta = std::fs::metadata(src).ok();
            match meta {
                Some(md) if md.is_file() && md.len() <= MAX_INLINE => {
                    let text = std::fs::read(src)
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok());
                    match text {
                        Some(t) if inline_total + md.len() <= aspec::MAX_INLINE_TOTAL as u64 => {
                            inline_total += md.len();
                            am.source = None;
                            am.content = Some(t);
                        }
                        _ => {
                            dropped.push(m.destination.clone());
                            continue;
                        }
                    }
                }
                Some(md) if md.is_dir() && m.destination == "/dev/shm" => {
                    am = aspec::Mount {
                        destination: m.destination.clone(),
                        kind: Some("tmpfs".into()),
                        source: Some("shm".into()),
                        options: vec![
                            "nosuid".into(),
                            "nodev".into(),
                            "noexec".into(),
                            "mode=1777".into(),
                        ],
                        content: None,
                    };
                }
                _ => {
                    dropped.push(m.destination.clone());
                    continue;
                }
            }
        }
        mounts.push(am);
    }
    if mounts.len() > aspec::MAX_MOUNTS {
        return Err(Error::Unsupported(format!(
            "{} mounts, more than a microVM container takes ({})",
            mounts.len(),
            aspec::MAX_MOUNTS
        )));
    }
    let setup = aspec::ContainerSetup {
        root: aspec::Root {
            path: "/dev/vda".into(),
            readonly: spec.root.as_ref().is_some_and(|r| r.readonly),
            fstype: Some("ext4".into()),
        },
        hostname: spec.hostname.clone().filter(|h| !h.is_empty()),
        mounts,
    };
    setup
        .validate()
        .map_err(|e| Error::InvalidSpec(e.to_string()))?;
    Ok((setup, dropped))
}

/// The agent's process spec for an OCI process.
fn agent_process(p: &Process) -> aspec::Process {
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    aspec::Process {
        terminal: p.terminal,
        console_size: p
            .console_size
            .filter(|c| c.height > 0 && c.width > 0)
            .map(|c| aspec::ConsoleSize {
                height: clamp(c.height),
                width: clamp(c.width),
            }),
        user: aspec::User {
            uid: p.user.uid,
            gid: p.user.gid,
            umask: p.user.umask,
            additional_gids: p.user.additional_gids.clone(),
        },
        args: p.args.clone(),
        env: p.env.clone(),
        cwd: p.cwd.clone(),
        rlimits: p
            .rlimits
            .iter()
            .map(|r| aspec::Rlimit {
                kind: r.kind.clone(),
                soft: r.soft,
                hard: r.hard,
            })
            .collect(),
        no_new_privileges: p.no_new_privileges,
    }
}

/// The agent of one VM, through the VMM's hybrid vsock socket.
pub struct Agent {
    client: Client,
}

impl Agent {
    pub fn new(vsock: PathBuf) -> Agent {
        Agent {
            client: Client::vsock(vsock),
        }
    }

    /// Waits until the agent answers, or the VMM exits (`exited` says why),
    /// or `deadline` passes.
    pub fn wait_ready(&self, deadline: Instant, exited: impl Fn() -> Option<String>) -> Result<()> {
        loop {
            let last = match self.client.ping(Duration::from_secs(1)) {
                Ok(()) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if let Some(why) = exited() {
                return Err(Error::Guest(format!("the VM did not boot: {why}")));
            }
            if Instant::now() > deadline {
                return Err(Error::Guest(format!(
                    "the VM's agent did not answer in time ({last})"
                )));
            }
        }
    }

    /// Sends the container setup; mounts the guest kernel cannot make are
    /// logged.
    pub fn setup(&self, s: &aspec::ContainerSetup) -> Result<Vec<String>> {
        let report = self
            .client
            .setup(s)
            .map_err(agent_error("container setup in the VM"))?;
        Ok(report.skipped)
    }

    /// Starts `p` with its streams on `io`; the relay runs until it ends.
    pub fn exec(&self, p: &Process, io: Io) -> Result<Arc<dyn Workload>> {
        let session = self.client.exec(&agent_process(p)).map_err(|e| match e {
            ClientError::Agent(m) => Error::Guest(m),
            e => Error::Guest(format!("start the process in the VM: {e}")),
        })?;
        let input = session.input();
        let (out, err, terminal) = match io {
            Io::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                spawn_input(File::from(stdin), input.clone(), false);
                (File::from(stdout), File::from(stderr), false)
            }
            Io::Terminal(t) => {
                // The host side passes bytes through; the guest's pty does
                // the line discipline.
                let fd = std::os::fd::AsRawFd::as_raw_fd(&t);
                let _ = crate::console::make_raw(fd);
                let reader = dup(&t)?;
                let writer = dup(&t)?;
                spawn_input(File::from(reader), input.clone(), true);
                (File::from(writer), File::from(t), true)
            }
        };
        Ok(Arc::new(AgentProcess {
            input,
            session: Mutex::new(Some((session, out, err))),
            terminal,
        }))
    }

    /// Powers the guest off (its file systems synced first).
    pub fn shutdown(&self) -> Result<()> {
        self.client
            .shutdown()
            .map_err(agent_error("shut the VM down"))
    }
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    fd.try_clone().map_err(Error::io("duplicate a descriptor"))
}

/// Copies the engine's input to the process until it ends (a closed pipe
/// ends the process's input; a terminal's end does not send EOF, the
/// process keeps its terminal).
fn spawn_input(mut from: File, to: SessionInput, terminal: bool) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_stdin(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if !terminal {
            let _ = to.close_stdin();
        }
    });
}

/// One process in the guest.
struct AgentProcess {
    input: SessionInput,
    /// The session and where its output goes, taken by `wait`.
    session: Mutex<Option<(Session, File, File)>>,
    terminal: bool,
}

impl Workload for AgentProcess {
    fn signal(&self, sig: i32, all: bool) -> Result<()> {
        let r = if all {
            self.input.signal_all(sig)
        } else {
            self.input.signal(sig)
        };
        r.map_err(|_| Error::NotRunning)
    }

    fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        if !self.terminal {
            return Ok(());
        }
        self.input
            .resize(rows, cols)
            .map_err(agent_error("resize the terminal"))
    }

    fn wait(&self) -> Result<i32> {
        let taken = self.session.lock().ok().and_then(|mut s| s.take());
        let Some((mut session, mut out, mut err)) = taken else {
            return Err(Error::Other("the process is already waited for".into()));
        };
        // Output goes on while a reader is gone (an engine that closed its
        // end): what counts is the exit status.
        let mut out_ok = true;
        let mut err_ok = true;
        loop {
            match session.next_event() {
                Ok(Event::Stdout(d)) if out_ok => out_ok = out.write_all(&d).is_ok(),
                Ok(Event::Stderr(d)) if err_ok => err_ok = err.write_all(&d).is_ok(),
                Ok(Event::Exit(s)) => return Ok(s.code()),
                Ok(_) => {}
                Err(e) => return Err(Error::Guest(format!("lost the process in the VM: {e}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_style_mounts_become_a_setup() {
        let dir = std::env::temp_dir().join(format!("condo-oci-setup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("shm")).expect("dir");
        std::fs::create_dir_all(dir.join("volume")).expect("dir");
        std::fs::write(dir.join("hosts"), "127.0.0.1 localhost\n").expect("hosts");
        let spec_text = format!(
            r#"{{"process":{{"args":["a"],"cwd":"/"}},"root":{{"path":"r","readonly":true}},"hostname":"box",
            "mounts":[
              {{"destination":"/proc","type":"proc","source":"proc"}},
              {{"destination":"/etc/hosts","type":"bind","source":"{0}/hosts","options":["rbind","ro"]}},
              {{"destination":"/dev/shm","type":"bind","source":"{0}/shm","options":["rbind"]}},
              {{"destination":"/data","type":"bind","source":"{0}/volume","options":["rbind"]}}
            ]}}"#,
            dir.display()
        );
        let spec = Spec::parse(spec_text.as_bytes()).expect("spec");
        let (s, dropped) = container_setup(&spec).expect("setup");
        assert_eq!(s.root.path, "/dev/vda");
        assert!(s.root.readonly);
        assert_eq!(s.hostname.as_deref(), Some("box"));
        assert_eq!(s.mounts.len(), 3);
        assert_eq!(
            s.mounts[1].content.as_deref(),
            Some("127.0.0.1 localhost\n")
        );
        assert_eq!(s.mounts[1].source, None);
        assert_eq!(s.mounts[2].kind.as_deref(), Some("tmpfs"));
        assert_eq!(dropped, ["/data"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_oci_process_maps_onto_the_agents() {
        let p: Process = serde_json::from_str(
            r#"{"terminal":true,"consoleSize":{"height":30,"width":100000},"user":{"uid":1,"gid":2,"additionalGids":[3]},
            "args":["sh"],"env":["A=b"],"cwd":"/tmp","rlimits":[{"type":"RLIMIT_NOFILE","hard":9,"soft":8}]}"#,
        )
        .expect("process");
        let a = agent_process(&p);
        assert!(a.terminal);
        assert_eq!(
            a.console_size.map(|c| (c.height, c.width)),
            Some((30, u16::MAX))
        );
        assert_eq!((a.user.uid, a.user.gid), (1, 2));
        assert_eq!(a.rlimits[0].soft, 8);
        a.validate().expect("valid");
    }
}
