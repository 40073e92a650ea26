//! The managed network: one bridge with the subnet's first address, NAT
//! from the subnet to the host's other interfaces (an nftables table of
//! its own), and per guest a network namespace holding the TAP its VMM
//! opens. In the namespace, `tap0` (owned by the guest's uid) and `eth0`
//! (one end of a veth pair whose other end is a port of the host bridge)
//! are joined by a bridge `br0`: every guest's TAP has the same name in
//! its own namespace, so a guest restored from another's snapshot (which
//! names `tap0`) finds its own. The jailed VMM joins the namespace
//! (`condo jail --netns`); it sees no host interface.
//!
//! Set up with iproute2's `ip` and `nft` (found in the usual places, or
//! named by CONDO_IP and CONDO_NFT). The guest configures its address from
//! the kernel's `ip=` argument (see `manager.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::config::Subnet;
use crate::error::{Error, Result};

/// Where network namespaces are named (`ip netns`).
const NETNS_DIR: &str = "/run/netns";

/// Finds a tool: `$env`, else the first `name` in the usual directories
/// that is not busybox (whose `ip` lacks netns and tuntap).
pub fn find_tool(name: &str, env: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| {
        p.is_file()
            && std::fs::canonicalize(p)
                .map(|c| c.file_name().is_some_and(|n| n != "busybox"))
                .unwrap_or(false)
    })
}

/// Runs a command; its standard error becomes the error message.
fn run(cmd: &Path, args: &[&str], input: Option<&str>) -> Result<()> {
    let shown = || format!("{} {}", cmd.display(), args.join(" "));
    let mut c = Command::new(cmd);
    c.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .map_err(|e| Error::Other(format!("{}: {e}", shown())))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Other(format!("{}: {e}", shown())))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(Error::Other(format!(
            "network: {} failed: {}",
            shown(),
            err.trim().lines().next().unwrap_or("(no message)")
        )))
    }
}

/// The managed network of one daemon.
#[derive(Debug, Clone)]
pub struct Network {
    ip: PathBuf,
    nft: Option<PathBuf>,
    pub bridge: String,
    pub subnet: Subnet,
    /// Host numbers of the subnet this daemon gives its guests.
    pub hosts: std::ops::Range<u32>,
    nat: bool,
}

impl Network {
    pub fn new(bridge: &str, subnet: Subnet, nat: bool) -> Result<Self> {
        let ip = find_tool("ip", "CONDO_IP").ok_or_else(|| {
            Error::Other(
                "network: iproute2's `ip` not found (install iproute2, or set CONDO_IP)".into(),
            )
        })?;
        let nft = find_tool("nft", "CONDO_NFT");
        if nat && nft.is_none() {
            return Err(Error::Other(
                "network: `nft` not found for NAT (install nftables, set CONDO_NFT, or run the daemon with --no-nat)".into(),
            ));
        }
        Ok(Self {
            ip,
            nft,
            bridge: bridge.to_owned(),
            subnet,
            hosts: subnet.guest_hosts(),
            nat,
        })
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        run(&self.ip, args, None)
    }

    /// Makes the bridge (if missing), gives it the gateway address, turns
    /// on forwarding and installs the NAT table. Idempotent.
    pub fn setup(&self) -> Result<()> {
        let br = self.bridge.as_str();
        if !Path::new("/sys/class/net").join(br).exists() {
            self.ip(&["link", "add", br, "type", "bridge"])?;
        }
        let addr = format!("{}/{}", self.subnet.gateway(), self.subnet.prefix);
        self.ip(&["addr", "replace", &addr, "dev", br])?;
        self.ip(&["link", "set", br, "up"])?;
        if self.nat {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .map_err(|e| Error::Other(format!("network: enable IPv4 forwarding: {e}")))?;
            let table = self.nat_table();
            let script = format!(
                "table ip {table} {{}}\n\
                 delete table ip {table}\n\
                 table ip {table} {{\n\
                   chain postrouting {{\n\
                     type nat hook postrouting priority srcnat; policy accept;\n\
                     ip saddr {net} ip daddr != {net} masquerade\n\
                   }}\n\
                   chain forward {{\n\
                     type filter hook forward priority filter; policy accept;\n\
                     iifname \"{br}\" accept\n\
                     oifname \"{br}\" ct state established,related accept\n\
                   }}\n\
                 }}\n",
                net = self.subnet
            );
            if let Some(nft) = &self.nft {
                run(nft, &["-f", "-"], Some(&script))?;
            }
        }
        Ok(())
    }

    /// The nftables table of this bridge.
    pub fn nat_table(&self) -> String {
        format!("condo_{}", self.bridge)
    }

    /// Removes the NAT table and the bridge (`condo daemon` does not; for
    /// tests and uninstalls).
    pub fn teardown(&self) {
        if let Some(nft) = &self.nft {
            let _ = run(nft, &["delete", "table", "ip", &self.nat_table()], None);
        }
        let _ = self.ip(&["link", "delete", &self.bridge]);
    }

    pub fn netns_name(&self, id: i64) -> String {
        format!("condo-{}-{id}", self.bridge)
    }

    /// The host end of a guest's veth pair (at most 15 characters: the
    /// bridge's name has at most 6, ids stay below 10^8).
    pub fn veth_name(&self, id: i64) -> String {
        format!("{}v{id}", self.bridge)
    }

    /// Forgets the MAC addresses the host bridge learned on guest `id`'s
    /// port. A clone runs with its snapshot's MAC until it is readdressed:
    /// a frame it sent meanwhile (one its source had queued) teaches the
    /// bridge that the source's MAC is behind the clone's port, and the
    /// source would be unreachable until it next sent something.
    pub fn forget_learned(&self, id: i64) -> Result<()> {
        self.ip(&[
            "link",
            "set",
            "dev",
            &self.veth_name(id),
            "type",
            "bridge_slave",
            "flush",
        ])
    }

    /// The path the jail joins.
    pub fn netns_path(&self, id: i64) -> PathBuf {
        Path::new(NETNS_DIR).join(self.netns_name(id))
    }

    /// Builds guest `id`'s namespace with `tap0` owned by `uid`, bridged
    /// to the host bridge. Leftovers of an earlier attempt are removed
    /// first.
    pub fn attach(&self, id: i64, uid: u32) -> Result<PathBuf> {
        self.detach(id);
        let ns = self.netns_name(id);
        let veth = self.veth_name(id);
        let r = (|| {
            self.ip(&["netns", "add", &ns])?;
            self.ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            self.ip(&["link", "set", &veth, "master", &self.bridge, "up"])?;
            let uid = uid.to_string();
            let batch = format!(
                "link add br0 type bridge\n\
                 tuntap add dev tap0 mode tap user {uid} group {uid}\n\
                 link set tap0 master br0\n\
                 link set eth0 master br0\n\
                 link set tap0 up\n\
                 link set eth0 up\n\
                 link set br0 up\n"
            );
            run(&self.ip, &["-n", &ns, "-batch", "-"], Some(&batch))
        })();
        if let Err(e) = r {
            self.detach(id);
            return Err(e);
        }
        Ok(self.netns_path(id))
    }

    /// Removes guest `id`'s namespace (its TAP, bridge and veth go with
    /// it). Nothing to remove is not an error.
    pub fn detach(&self, id: i64) {
        let ns = self.netns_name(id);
        if self.netns_path(id).exists() {
            let _ = self.ip(&["netns", "delete", &ns]);
        }
        if Path::new("/sys/class/net")
            .join(self.veth_name(id))
            .exists()
        {
            let _ = self.ip(&["link", "delete", &self.veth_name(id)]);
        }
    }

    /// Guest ids that have a namespace of this bridge.
    pub fn attached_ids(&self) -> Vec<i64> {
        let prefix = format!("condo-{}-", self.bridge);
        std::fs::read_dir(NETNS_DIR)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str()?.strip_prefix(&prefix)?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The guest shell command that gives a clone its own network identity:
    /// a clone restored from a snapshot runs with the source guest's MAC,
    /// address and name, which its kernel set at boot from `ip=`. Run
    /// through the guest agent (busybox's `ip` and `hostname`), then a
    /// gratuitous ARP where the guest has `arping`, so that the bridge and
    /// the other guests learn the new pair at once.
    pub fn guest_readdress_command(
        &self,
        ip: std::net::Ipv4Addr,
        mac: &str,
        hostname: &str,
    ) -> Vec<String> {
        let gw = self.subnet.gateway();
        let prefix = self.subnet.prefix;
        vec![
            "/bin/sh".into(),
            "-c".into(),
            format!(
                "set -e; ip link set eth0 down; ip link set eth0 address {mac}; ip link set eth0 up; \
                 ip addr flush dev eth0; ip addr add {ip}/{prefix} dev eth0; \
                 ip route replace default via {gw} dev eth0; hostname {hostname}; \
                 if command -v arping >/dev/null; then arping -q -U -c 1 -I eth0 {ip} || true; fi"
            ),
        ]
    }

    /// The kernel's `ip=` argument configuring the guest's eth0.
    pub fn kernel_ip_arg(&self, ip: std::net::Ipv4Addr, hostname: &str) -> String {
        format!(
            "ip={ip}::{}:{}:{hostname}:eth0:off",
            self.subnet.gateway(),
            self.subnet.netmask()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limits() {
        let n = Network {
            ip: "/bin/ip".into(),
            nft: None,
            bridge: "condo0".into(),
            subnet: Subnet::parse("10.151.0.0/16").unwrap(),
            hosts: 2..65535,
            nat: false,
        };
        assert!(n.veth_name(99_999_999).len() <= 15);
        assert_eq!(n.netns_name(7), "condo-condo0-7");
        assert_eq!(
            n.kernel_ip_arg("10.151.0.2".parse().unwrap(), "web"),
            "ip=10.151.0.2::10.151.0.1:255.255.0.0:web:eth0:off"
        );
    }
}
