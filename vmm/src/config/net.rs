//! A virtio-net interface on a host TAP device (Firecracker's
//! `NetworkInterface`), from the API, the config file or `--net tap=...`.

use devices::rate_limiter::RateLimiterConfig;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::spec::{parse_kv, rate_limiter_key};
use super::ConfigError;

/// A MAC address; `06:00:ac:10:00:02` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The address condo gives interface `index` when none is set:
    /// 06:00:00:00:00:NN (locally administered).
    pub fn default_for(index: usize) -> Self {
        Self([0x06, 0, 0, 0, 0, (index as u8).wrapping_add(1)])
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad MAC address {s:?}");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut mac {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        match parts.next() {
            None => Ok(Self(mac)),
            Some(_) => Err(bad()),
        }
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Firecracker's `NetworkInterface`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface's id.
    pub iface_id: String,
    /// Host TAP interface name.
    pub host_dev_name: String,
    /// Guest MAC address; [`MacAddr::default_for`] its position when unset.
    #[serde(default)]
    pub guest_mac: Option<MacAddr>,
    /// Throttling of frames to the guest.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Throttling of frames from the guest.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// `PATCH /network-interfaces/{id}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    pub iface_id: String,
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// The longest TAP name Linux takes (IFNAMSIZ less the NUL).
const MAX_TAP_NAME: usize = 15;

impl NetworkInterface {
    /// Checks the interface.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.host_dev_name;
        if t.is_empty() || t.len() > MAX_TAP_NAME || t.contains(['/', '\0']) {
            return Err(ConfigError::Net(format!(
                "{:?}: bad host device name {t:?}",
                self.iface_id
            )));
        }
        Ok(())
    }

    /// Parses `tap=NAME[,mac=MAC][,id=ID][,bw_size=..,ops_size=..]`; the id
    /// defaults to ethN, and rate limits (Cloud Hypervisor's keys) apply to
    /// both directions.
    pub fn from_spec(spec: &str, index: usize) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Net(format!("{spec:?}: {why}"));
        let mut n = NetworkInterface {
            iface_id: format!("eth{index}"),
            ..Self::default()
        };
        let mut rl = RateLimiterConfig::default();
        parse_kv(spec, |k, v| {
            match k {
                "tap" => n.host_dev_name = v.to_owned(),
                "mac" => n.guest_mac = Some(v.parse()?),
                "id" => n.iface_id = v.to_owned(),
                _ if rate_limiter_key(&mut rl, k, v)? => {}
                _ => return Err(format!("unknown key {k:?} (tap, mac, id, bw_*, ops_*)")),
            }
            Ok(())
        })
        .map_err(bad)?;
        if n.host_dev_name.is_empty() {
            return Err(bad("tap= is required".into()));
        }
        n.rx_rate_limiter = Some(rl);
        n.tx_rate_limiter = Some(rl);
        Ok(n)
    }
}
