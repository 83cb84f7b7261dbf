//! The isolation keys of a service file: `[limits]` (cgroup v2), privileges (`capabilities`,
//! `no_new_privs`, `[rlimits]`) and `[container]` (image, upper layer, volumes, network).
//!
//! Every value is checked while decoding, through small newtypes whose `Deserialize` rejects
//! bad input with `de::Error::custom`, so toml attaches the value's span and the operator gets
//! `file:line:col: limits.memory_max: ...`. What can only be known at start time (does the
//! image exist, is the controller enabled) is checked by the spawn path and logged there.

use std::collections::BTreeMap;

use serde::de::{self, Deserialize, Deserializer};
use serde::Deserialize as DeriveDeserialize;

// ---- [limits] ---------------------------------------------------------------------------

/// cgroup v2 interface files and the values to write, in the order they are written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub files: Vec<(String, String)>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[derive(DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsFile {
    memory_max: Option<Bytes>,
    memory_high: Option<Bytes>,
    memory_swap_max: Option<Bytes>,
    cpu_max: Option<CpuMax>,
    cpu_weight: Option<Weight>,
    pids_max: Option<Count>,
    io_weight: Option<Weight>,
    #[serde(default)]
    cgroup: BTreeMap<RawFile, String>,
}

impl LimitsFile {
    pub(super) fn into_limits(self) -> Limits {
        let mut files = Vec::new();
        let mut put = |file: &str, value: Option<String>| {
            if let Some(v) = value {
                files.push((file.to_string(), v));
            }
        };
        // memory.high before memory.max, so a lowered max never sits below a stale high.
        put("memory.high", self.memory_high.map(|b| b.0));
        put("memory.max", self.memory_max.map(|b| b.0));
        put("memory.swap.max", self.memory_swap_max.map(|b| b.0));
        put("cpu.max", self.cpu_max.map(|c| c.0));
        put("cpu.weight", self.cpu_weight.map(|w| w.0.to_string()));
        put("pids.max", self.pids_max.map(|c| c.0));
        put("io.weight", self.io_weight.map(|w| format!("default {}", w.0)));
        for (file, value) in self.cgroup {
            files.push((file.0, value));
        }
        Limits { files }
    }
}

/// A byte count with an optional binary suffix (`K`, `M`, `G`), or `"max"`; written in bytes.
struct Bytes(String);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Scalar::deserialize(d)?;
        let text = match &v {
            Scalar::Int(i) if *i >= 0 => return Ok(Bytes(i.to_string())),
            Scalar::Str(s) => s.trim().to_string(),
            _ => String::new(),
        };
        parse_bytes(&text).map(Bytes).ok_or_else(|| {
            de::Error::custom(format!(
                "{} is not a size: a number of bytes, with K, M or G, or \"max\"",
                show(&v)
            ))
        })
    }
}

/// `"64M"` -> `"67108864"`, `"max"` -> `"max"`.
pub fn parse_bytes(text: &str) -> Option<String> {
    if text == "max" {
        return Some(text.into());
    }
    let (digits, shift) = match text.char_indices().last()? {
        (i, 'K' | 'k') => (&text[..i], 10),
        (i, 'M' | 'm') => (&text[..i], 20),
        (i, 'G' | 'g') => (&text[..i], 30),
        _ => (text, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1 << shift).map(|b| b.to_string())
}

/// `cpu.max`: `"max"`, `"QUOTA"` or `"QUOTA PERIOD"` in microseconds, or a percentage of one
/// CPU such as `"50%"` (quota over the default 100 ms period).
struct CpuMax(String);

impl<'de> Deserialize<'de> for CpuMax {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_cpu_max(&s).map(CpuMax).ok_or_else(|| {
            de::Error::custom(format!(
                "{s:?} is not a cpu.max value: \"max\", \"QUOTA PERIOD\" in microseconds, or \
                 a percentage such as \"50%\""
            ))
        })
    }
}

pub fn parse_cpu_max(s: &str) -> Option<String> {
    if let Some(pct) = s.trim().strip_suffix('%') {
        // Up to 10000 CPUs' worth: far more than any device, and the quota cannot wrap.
        let pct: u64 = pct.trim().parse().ok()?;
        return (1..=1_000_000).contains(&pct).then(|| format!("{} 100000", pct * 1000));
    }
    let mut words = s.split_whitespace();
    let quota = words.next()?;
    let period = words.next();
    if words.next().is_some() || (quota != "max" && quota.parse::<u64>().ok()? < 1000) {
        return None;
    }
    match period {
        None => Some(quota.to_string()),
        Some(p) if (1000..=1_000_000).contains(&p.parse::<u64>().ok()?) => {
            Some(format!("{quota} {p}"))
        }
        Some(_) => None,
    }
}

/// cpu.weight and io.weight: 1 to 10000.
struct Weight(u32);

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match u32::try_from(n) {
            Ok(w) if (1..=10_000).contains(&w) => Ok(Weight(w)),
            _ => Err(de::Error::custom(format!("weight {n} is out of range 1..=10000"))),
        }
    }
}

/// pids.max: a number of at least 1, or `"max"`.
struct Count(String);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Int(n) if n >= 1 => Ok(Count(n.to_string())),
            Scalar::Str(s) if s == "max" => Ok(Count(s)),
            v => Err(de::Error::custom(format!(
                "{} is not a process count (>= 1, or \"max\")",
                show(&v)
            ))),
        }
    }
}

/// The cgroup files that `[limits]` has typed keys for.
const TYPED_FILES: &[(&str, &str)] = &[
    ("memory.max", "memory_max"),
    ("memory.high", "memory_high"),
    ("memory.swap.max", "memory_swap_max"),
    ("cpu.max", "cpu_max"),
    ("cpu.weight", "cpu_weight"),
    ("pids.max", "pids_max"),
    ("io.weight", "io_weight"),
];

/// The name of a cgroup interface file under `[limits.cgroup]`, passed through verbatim.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct RawFile(String);

impl<'de> Deserialize<'de> for RawFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = s.contains('.')
            && !s.starts_with("cgroup.")
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._".contains(&b));
        // One way to set each file: a raw value written after the typed key would win
        // without a word.
        if let Some((_, key)) = TYPED_FILES.iter().find(|(file, _)| *file == s) {
            return Err(de::Error::custom(format!(
                "limits.cgroup: {s:?} has its own key: write {key} in [limits]"
            )));
        }
        if ok {
            return Ok(RawFile(s));
        }
        Err(de::Error::custom(format!(
            "limits.cgroup: {s:?} is not a controller file such as \"memory.oom.group\" \
             (cgroup.* core files are brig's own)"
        )))
    }
}

/// A number, a string or a list of them, as the operator wrote it. A stand-in for
/// `toml::Value`, whose deserializer would add tens of KB to the binary.
pub(super) enum Scalar {
    Int(i64),
    Str(String),
    List(Vec<Scalar>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(i64::try_from(v).map_or(Scalar::Other("a huge number"), Scalar::Int))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar, E> {
                Ok(Scalar::Other("a boolean"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
                Ok(Scalar::Other("a fraction"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Scalar::List(items))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Scalar, A::Error> {
                Ok(Scalar::Other("a table"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A value as the operator wrote it, for error messages.
fn show(v: &Scalar) -> String {
    match v {
        Scalar::Str(s) => format!("{s:?}"),
        Scalar::Int(i) => i.to_string(),
        Scalar::List(a) => format!("[{}]", a.iter().map(show).collect::<Vec<_>>().join(", ")),
        Scalar::Other(what) => (*what).to_string(),
    }
}

// ---- privileges ---------------------------------------------------------------------------

/// Capability names in the kernel's numbering (linux/capability.h), without `CAP_`.
pub const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A set of capabilities as a bit mask (bit n = capability number n).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps(pub u64);

impl<'de> Deserialize<'de> for Caps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        let mut mask = 0u64;
        for name in names {
            let upper = name.to_ascii_uppercase();
            let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
            match CAPABILITIES.iter().position(|c| *c == bare) {
                Some(n) => mask |= 1 << n,
                None => {
                    return Err(de::Error::custom(format!(
                        "capabilities: unknown capability {name:?} (for example \
                         \"CAP_NET_BIND_SERVICE\")"
                    )))
                }
            }
        }
        Ok(Caps(mask))
    }
}

/// One resource limit: soft and hard (`RLIM_INFINITY` for "infinity").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: i32,
    pub soft: u64,
    pub hard: u64,
}

/// The names accepted under `[rlimits]`, with their resource numbers.
const RLIMITS: &[(&str, i32)] = &[
    ("as", libc::RLIMIT_AS as i32),
    ("core", libc::RLIMIT_CORE as i32),
    ("cpu", libc::RLIMIT_CPU as i32),
    ("data", libc::RLIMIT_DATA as i32),
    ("fsize", libc::RLIMIT_FSIZE as i32),
    ("memlock", libc::RLIMIT_MEMLOCK as i32),
    ("nofile", libc::RLIMIT_NOFILE as i32),
    ("nproc", libc::RLIMIT_NPROC as i32),
    ("stack", libc::RLIMIT_STACK as i32),
];

/// `[rlimits]`: `nofile = 1024` (soft and hard) or `nofile = [1024, 4096]`, or "infinity".
pub(super) fn decode_rlimits(table: BTreeMap<String, Scalar>) -> Result<Vec<Rlimit>, String> {
    let one = |v: &Scalar| match v {
        Scalar::Int(n) if *n >= 0 => Some(*n as u64),
        Scalar::Str(s) if s == "infinity" => Some(libc::RLIM_INFINITY),
        _ => None,
    };
    let mut out = Vec::new();
    for (name, value) in table {
        let Some(&(_, resource)) = RLIMITS.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = RLIMITS.iter().map(|(n, _)| *n).collect();
            return Err(format!("rlimits: unknown limit {name:?} (one of {})", known.join(", ")));
        };
        let pair = match &value {
            Scalar::List(a) if a.len() == 2 => one(&a[0]).zip(one(&a[1])),
            v => one(v).map(|n| (n, n)),
        };
        match pair {
            Some((soft, hard)) if soft <= hard => out.push(Rlimit { resource, soft, hard }),
            _ => {
                return Err(format!(
                    "rlimits.{name}: {} is not a limit (a number, \"infinity\", or \
                     [soft, hard] with soft <= hard)",
                    show(&value)
                ))
            }
        }
    }
    Ok(out)
}

// ---- [container] --------------------------------------------------------------------------

/// Where a container's writable layer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, DeriveDeserialize)]
#[serde(rename_all = "lowercase")]
pub enum Upper {
    /// tmpfs: every start begins from the image.
    #[default]
    Ephemeral,
    /// A directory under the state directory: kept across restarts and reboots.
    Persistent,
}

/// A container's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, DeriveDeserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's network (no network namespace).
    #[default]
    Host,
    /// A network namespace with only loopback, up.
    None,
    /// A network namespace with loopback and `eth0`, one end of a veth pair whose other end
    /// joins a bridge of the host, with a static address.
    Bridge,
}

/// Bridge networking: the host bridge, the address of `eth0` and the default route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNet {
    pub bridge: String,
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<std::net::Ipv4Addr>,
}

/// A mount inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Volume {
    Bind { source: String, target: String, read_only: bool },
    Tmpfs { target: String, size: String },
}

impl Volume {
    pub fn target(&self) -> &str {
        match self {
            Volume::Bind { target, .. } | Volume::Tmpfs { target, .. } => target,
        }
    }
}

/// A validated `[container]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// A name in the image store, or an absolute path to a directory; `/` (the host's root)
    /// when the file names none.
    pub image: String,
    pub upper: Upper,
    pub hostname: Option<String>,
    pub network: Network,
    pub read_only: bool,
    pub volumes: Vec<Volume>,
    /// Set exactly when `network` is `bridge`.
    pub bridge: Option<BridgeNet>,
    /// Run in a user namespace with these id maps: root inside is an unprivileged id outside.
    pub user_namespace: Option<UserNamespace>,
    /// brig's own init is PID 1 of the container and reaps its orphans; the service runs
    /// as its child (PID 2).
    pub init: bool,
}

/// One range of an id map: ids `inside .. inside + count` in the container are
/// `host .. host + count` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub inside: u32,
    pub host: u32,
    pub count: u32,
}

impl IdMap {
    /// Whether the id `inside` (as seen in the container) is mapped.
    pub fn contains(self, inside: u32) -> bool {
        inside >= self.inside && inside - self.inside < self.count
    }

    /// The host id of `inside`, when it is mapped.
    pub fn host_id(self, inside: u32) -> Option<u32> {
        self.contains(inside).then(|| self.host + (inside - self.inside))
    }

    /// The line written to /proc/PID/uid_map or gid_map.
    pub fn proc_line(&self) -> String {
        format!("{} {} {}\n", self.inside, self.host, self.count)
    }
}

impl std::fmt::Display for IdMap {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.inside, self.host, self.count)
    }
}

/// The id maps of a container's user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserNamespace {
    pub uid: IdMap,
    pub gid: IdMap,
}

impl UserNamespace {
    /// The host uid and gid of root in the container (the first mapped ids when 0 is not).
    pub fn root_on_host(&self) -> (u32, u32) {
        (self.uid.host_id(0).unwrap_or(self.uid.host), self.gid.host_id(0).unwrap_or(self.gid.host))
    }
}

/// Parses `INSIDE:HOST:COUNT` for the key `field`. The host range may not hold host id 0:
/// a container whose ids reach host root gains nothing from its user namespace.
pub fn parse_id_map(field: &str, text: &str) -> Result<IdMap, String> {
    let nums: Vec<Option<u32>> = text.split(':').map(|n| n.trim().parse().ok()).collect();
    let [Some(inside), Some(host), Some(count)] = nums[..] else {
        return Err(format!(
            "container.{field}: {text:?} is not INSIDE:HOST:COUNT, such as \"0:100000:65536\""
        ));
    };
    let fits = |start: u32| start.checked_add(count).is_some();
    if count == 0 || !fits(inside) || !fits(host) {
        return Err(format!(
            "container.{field}: {text:?}: COUNT must be at least 1 and both ranges must end \
             below 4294967295"
        ));
    }
    if host == 0 {
        return Err(format!(
            "container.{field}: {text:?} maps onto host id 0 (root): pick a host range of \
             unused ids, such as 100000"
        ));
    }
    Ok(IdMap { inside, host, count })
}

#[derive(DeriveDeserialize)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    image: Option<ImageName>,
    #[serde(default)]
    init: bool,
    #[serde(default)]
    upper: Upper,
    hostname: Option<Hostname>,
    #[serde(default)]
    network: Network,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    volumes: Vec<VolumeFile>,
    bridge: Option<String>,
    address: Option<String>,
    gateway: Option<String>,
    uid_map: Option<String>,
    gid_map: Option<String>,
}

/// The `[container]` table, checked as a whole (the bridge keys go together).
pub(super) struct ContainerFile(Container);

impl ContainerFile {
    pub(super) fn into_container(self) -> Container {
        self.0
    }
}

impl<'de> Deserialize<'de> for ContainerFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawContainer::deserialize(d)?;
        let bridge = bridge_net(raw.network, raw.bridge, raw.address, raw.gateway)
            .map_err(de::Error::custom)?;
        let user_namespace = user_namespace(raw.uid_map.as_deref(), raw.gid_map.as_deref())
            .map_err(de::Error::custom)?;
        let mut targets: Vec<&str> = raw.volumes.iter().map(|v| v.0.target()).collect();
        targets.sort_unstable();
        if let Some(w) = targets.windows(2).find(|w| w[0] == w[1]) {
            return Err(de::Error::custom(format!(
                "container.volumes: two volumes on {:?}: the second would hide the first",
                w[0]
            )));
        }
        Ok(ContainerFile(Container {
            // Without an image, the host's own root is the read-only base.
            image: raw.image.map_or_else(|| "/".to_string(), |i| i.0),
            init: raw.init,
            upper: raw.upper,
            hostname: raw.hostname.map(|h| h.0),
            network: raw.network,
            read_only: raw.read_only,
            volumes: raw.volumes.into_iter().map(|v| v.0).collect(),
            bridge,
            user_namespace,
        }))
    }
}

/// `uid_map` turns the user namespace on; `gid_map` defaults to the same ranges.
fn user_namespace(uid: Option<&str>, gid: Option<&str>) -> Result<Option<UserNamespace>, String> {
    let Some(uid) = uid else {
        if gid.is_some() {
            return Err(
                "container.gid_map needs uid_map (which turns the user namespace on)".into()
            );
        }
        return Ok(None);
    };
    let uid = parse_id_map("uid_map", uid)?;
    let gid = match gid {
        Some(g) => parse_id_map("gid_map", g)?,
        None => uid,
    };
    Ok(Some(UserNamespace { uid, gid }))
}

/// Checks the bridge keys: all of `bridge` and `address` with `network = "bridge"`, none
/// without.
fn bridge_net(
    network: Network,
    bridge: Option<String>,
    address: Option<String>,
    gateway: Option<String>,
) -> Result<Option<BridgeNet>, String> {
    if network != Network::Bridge {
        if bridge.is_some() || address.is_some() || gateway.is_some() {
            return Err("container: bridge, address and gateway need network = \"bridge\"".into());
        }
        return Ok(None);
    }
    let (Some(bridge), Some(address)) = (bridge, address) else {
        return Err(
            "container: network = \"bridge\" needs bridge = \"NAME\" and address = \"A.B.C.D/N\""
                .into(),
        );
    };
    if bridge.is_empty() || bridge.len() > 15 || bridge.contains(['/', ' ', '\0']) {
        return Err(format!("container.bridge: {bridge:?} is not an interface name"));
    }
    let parsed = address.split_once('/').and_then(|(ip, len)| {
        let prefix: u8 = len.parse().ok()?;
        (prefix <= 32).then_some(())?;
        Some((ip.parse().ok()?, prefix))
    });
    let Some((address_ip, prefix)) = parsed else {
        return Err(format!(
            "container.address: {address:?} is not an IPv4 address/prefix such as \"10.0.3.2/24\""
        ));
    };
    let gateway = match gateway {
        Some(g) => Some(
            g.parse().map_err(|_| format!("container.gateway: {g:?} is not an IPv4 address"))?,
        ),
        None => None,
    };
    Ok(Some(BridgeNet { bridge, address: address_ip, prefix, gateway }))
}

struct ImageName(String);

impl<'de> Deserialize<'de> for ImageName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let name_ok = super::service::valid_name(&s);
        let path_ok = s.starts_with('/') && !s.contains('\0') && !s.split('/').any(|c| c == "..");
        if name_ok || path_ok {
            return Ok(ImageName(s));
        }
        Err(de::Error::custom(format!(
            "container.image: {s:?} is neither an image name (letters, digits, '_', '-', '.') \
             nor an absolute path"
        )))
    }
}

/// A host name sethostname(2) takes and that reads as one: 1 to 64 letters, digits, '-', '.'.
pub(super) struct Hostname(pub(super) String);

impl<'de> Deserialize<'de> for Hostname {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b));
        if ok {
            return Ok(Hostname(s));
        }
        Err(de::Error::custom(format!(
            "{s:?} is not a host name (1 to 64 letters, digits, '-' and '.')"
        )))
    }
}

#[derive(DeriveDeserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    target: String,
    bind: Option<String>,
    #[serde(default)]
    read_only: bool,
    tmpfs: Option<String>,
}

struct VolumeFile(Volume);

impl<'de> Deserialize<'de> for VolumeFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawVolume::deserialize(d)?;
        let abs = |p: &str| p.starts_with('/') && !p.split('/').any(|c| c == "..");
        // Every component a plain name: "/." or "//" would be the root itself.
        let plain = raw.target.split('/').skip(1).all(|c| !c.is_empty() && c != ".");
        if !abs(&raw.target) || !plain {
            return Err(de::Error::custom(format!(
                "container.volumes: target {:?} must be an absolute path below / (no empty, \
                 \".\" or \"..\" components)",
                raw.target
            )));
        }
        // brig's own /proc (with its masks) and read-only /sys; /dev itself is brig's too,
        // but what goes below it is the operator's.
        let under = |top: &str| raw.target == top || raw.target.starts_with(&format!("{top}/"));
        if under("/proc") || under("/sys") || raw.target == "/dev" {
            return Err(de::Error::custom(format!(
                "container.volumes: target {:?} would cover or change what brig mounts there \
                 (/proc, /sys and /dev are the container's own)",
                raw.target
            )));
        }
        match (raw.bind, raw.tmpfs) {
            (Some(source), None) if abs(&source) => Ok(VolumeFile(Volume::Bind {
                source,
                target: raw.target,
                read_only: raw.read_only,
            })),
            (Some(source), None) => Err(de::Error::custom(format!(
                "container.volumes: bind source {source:?} must be an absolute path"
            ))),
            (None, Some(_)) if raw.read_only => Err(de::Error::custom(format!(
                "container.volumes: read_only is for bind volumes; the tmpfs at {:?} starts \
                 empty, so a read-only one could hold nothing",
                raw.target
            ))),
            // tmpfs takes size=0 as no limit at all: not what a sized volume means.
            (None, Some(size)) => match parse_bytes(&size) {
                Some(bytes) if bytes != "max" && bytes != "0" => {
                    Ok(VolumeFile(Volume::Tmpfs { target: raw.target, size: bytes }))
                }
                _ => Err(de::Error::custom(format!(
                    "container.volumes: tmpfs size {size:?} is not a size above 0 such as \"16M\""
                ))),
            },
            _ => Err(de::Error::custom(
                "container.volumes: each volume has exactly one of bind = \"/host/path\" or \
                 tmpfs = \"SIZE\"",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_network_needs_its_keys_and_only_then() {
        let b = bridge_net(
            Network::Bridge,
            Some("br0".into()),
            Some("10.0.3.2/24".into()),
            Some("10.0.3.1".into()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (b.bridge.as_str(), b.address.to_string(), b.prefix),
            ("br0", "10.0.3.2".into(), 24)
        );
        assert_eq!(b.gateway.unwrap().to_string(), "10.0.3.1");
        assert!(bridge_net(Network::Bridge, Some("br0".into()), None, None)
            .unwrap_err()
            .contains("needs"));
        assert!(bridge_net(Network::None, Some("br0".into()), None, None)
            .unwrap_err()
            .contains("need network"));
        assert!(bridge_net(Network::Bridge, Some("br0".into()), Some("10.0.3.2".into()), None)
            .unwrap_err()
            .contains("container.address"));
        assert!(bridge_net(
            Network::Bridge,
            Some("a-very-long-bridge-name".into()),
            Some("10.0.3.2/24".into()),
            None
        )
        .unwrap_err()
        .contains("container.bridge"));
    }

    #[test]
    fn id_maps_parse_and_refuse_host_root_and_overflow() {
        let m = parse_id_map("uid_map", "0:100000:65536").unwrap();
        assert_eq!(m, IdMap { inside: 0, host: 100000, count: 65536 });
        assert_eq!(m.proc_line(), "0 100000 65536\n");
        assert_eq!(m.host_id(0), Some(100000));
        assert_eq!(m.host_id(65535), Some(165535));
        assert_eq!(m.host_id(65536), None);
        assert!(parse_id_map("uid_map", "0:0:65536").unwrap_err().contains("host id 0"));
        assert!(parse_id_map("uid_map", "0:100000").unwrap_err().contains("INSIDE:HOST:COUNT"));
        assert!(parse_id_map("gid_map", "0:x:1").unwrap_err().contains("container.gid_map"));
        assert!(parse_id_map("uid_map", "0:100000:0").unwrap_err().contains("at least 1"));
        assert!(parse_id_map("uid_map", "0:4294967000:1000").unwrap_err().contains("below"));
    }

    #[test]
    fn gid_map_defaults_to_uid_map_and_needs_it() {
        let u = user_namespace(Some("0:200000:1000"), None).unwrap().unwrap();
        assert_eq!(u.gid, u.uid);
        let u = user_namespace(Some("0:200000:1000"), Some("0:300000:10")).unwrap().unwrap();
        assert_eq!(u.gid.host, 300000);
        assert!(user_namespace(None, Some("0:1:1")).unwrap_err().contains("needs uid_map"));
        assert_eq!(user_namespace(None, None).unwrap(), None);
    }

    #[test]
    fn sizes_take_binary_suffixes_and_max() {
        assert_eq!(parse_bytes("64M").as_deref(), Some("67108864"));
        assert_eq!(parse_bytes("1k").as_deref(), Some("1024"));
        assert_eq!(parse_bytes("4096").as_deref(), Some("4096"));
        assert_eq!(parse_bytes("max").as_deref(), Some("max"));
        assert_eq!(parse_bytes("12X"), None);
        assert_eq!(parse_bytes("-1"), None);
        assert_eq!(parse_bytes(""), None);
    }

    #[test]
    fn cpu_max_accepts_quota_period_and_percent() {
        assert_eq!(parse_cpu_max("50%").as_deref(), Some("50000 100000"));
        assert_eq!(parse_cpu_max("max").as_deref(), Some("max"));
        assert_eq!(parse_cpu_max("20000 100000").as_deref(), Some("20000 100000"));
        assert_eq!(parse_cpu_max("max 50000").as_deref(), Some("max 50000"));
        assert_eq!(parse_cpu_max("10"), None);
        assert_eq!(parse_cpu_max("20000 10"), None);
        assert_eq!(parse_cpu_max("1 2 3"), None);
        // Regression: a huge percentage wrapped into a small quota.
        assert_eq!(parse_cpu_max("18446744073709552%"), None);
        assert_eq!(parse_cpu_max("1000000%").as_deref(), Some("1000000000 100000"));
    }
}
