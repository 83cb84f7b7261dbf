//! Bridge networking for a container: a veth pair whose `eth0` end is the container's and
//! whose other end joins a bridge of the host, with a static address and a default route.
//!
//! The netlink requests are built here, in PID 1, with `netlink-packet-route` (the message
//! types of the rust-netlink project; brig sends the bytes itself, so no socket crate and no
//! async runtime come along). The child sends them as [`Op::Netlink`] steps: through a netlink
//! socket PID 1 opened before the clone, which still talks to the host's network namespace,
//! for the host end, and through a socket of its own for `eth0`. The veth pair is created from
//! inside the container with its peer placed in the host's namespace (a descriptor of it, also
//! opened before the clone), so no step needs the container's pid and nothing waits. When the
//! container's network namespace ends, the kernel deletes `eth0` and with it the host end.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use netlink_packet_core::{
    DefaultNla, Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use nix::errno::Errno;

use super::{Op, PrepareError};
use crate::config::isolation::BridgeNet;

/// The ifindex `eth0` is created with: the first free one in a fresh namespace (lo is 1).
const ETH0_INDEX: u32 = 2;
/// linux/veth.h: the peer's ifinfomsg and attributes, inside IFLA_INFO_DATA.
const VETH_INFO_PEER: u16 = 1;

/// Descriptors the child needs for the host side; closed in PID 1 after the clone.
#[derive(Debug)]
pub struct HostFds {
    pub netlink: OwnedFd,
    pub netns: OwnedFd,
}

/// The host end's name: `vb-` and the service name, cut to the 15 bytes of IFNAMSIZ.
pub fn host_ifname(service: &str) -> String {
    let mut name = format!("vb-{service}");
    name.truncate(15);
    name
}

/// Opens the host-side descriptors and builds the requests, labelled for the log.
pub fn prepare(service: &str, b: &BridgeNet) -> Result<(HostFds, Vec<(String, Op)>), PrepareError> {
    let bridge_index = if_index(&b.bridge)?;
    let fds = HostFds { netlink: netlink_socket()?, netns: open_netns()? };
    let host_name = host_ifname(service);
    let host = Some(fds.netlink.as_raw_fd());
    let up = libc::IFF_UP as u32;
    let create = NLM_F_CREATE | NLM_F_EXCL;
    let mut ops = Vec::new();
    let mut push = |label: String, host: Option<i32>, msg: Vec<u8>, ignore: Option<Errno>| {
        ops.push((label, Op::Netlink { host, msg, ignore }));
    };

    // A host end left by a container whose namespace is still being torn down.
    let stale = Rtnl::link(libc::RTM_DELLINK, 0, 0, vec![name_nla(&host_name)]);
    push(format!("delete stale {host_name}"), host, stale.request(0), Some(Errno::ENODEV));

    // The pair, made from inside: eth0 here, its peer straight into the host's namespace.
    let peer_ns = fds.netns.as_raw_fd() as u32;
    let peer =
        Rtnl::link(0, 0, 0, vec![name_nla(&host_name), u32_nla(libc::IFLA_NET_NS_FD, peer_ns)]);
    let info = vec![
        DefaultNla::new(libc::IFLA_INFO_KIND, b"veth\0".to_vec()),
        nested(libc::IFLA_INFO_DATA, vec![DefaultNla::new(VETH_INFO_PEER, peer.body())]),
    ];
    let veth = Rtnl::link(
        libc::RTM_NEWLINK,
        ETH0_INDEX,
        0,
        vec![name_nla("eth0"), nested(libc::IFLA_LINKINFO, info)],
    );
    push(format!("create veth eth0 with peer {host_name}"), None, veth.request(create), None);

    let attach = Rtnl::link(
        libc::RTM_SETLINK,
        0,
        up,
        vec![name_nla(&host_name), u32_nla(libc::IFLA_MASTER, bridge_index)],
    );
    let label = format!("attach {host_name} to bridge {} and set it up", b.bridge);
    push(label, host, attach.request(0), None);

    let eth0 = Rtnl::link(libc::RTM_SETLINK, ETH0_INDEX, up, Vec::new());
    push("set eth0 up".into(), None, eth0.request(0), None);

    let addr = Rtnl::address(b.address, b.prefix);
    push(
        format!("add address {}/{} to eth0", b.address, b.prefix),
        None,
        addr.request(create),
        None,
    );

    if let Some(gw) = b.gateway {
        let route = Rtnl::default_route(gw);
        push(format!("add default route via {gw}"), None, route.request(create), None);
    }
    Ok((fds, ops))
}

/// One rtnetlink message: its type, its fixed header (ifinfomsg, ifaddrmsg, rtmsg) and its
/// attributes. Only the few messages bridge networking needs, written out by hand: the typed
/// crate for all of rtnetlink (netlink-packet-route) added 217 KB to the stripped binary for
/// these six messages; netlink-packet-core's framing and attribute encoding cost little.
struct Rtnl {
    kind: u16,
    header: Vec<u8>,
    nlas: Vec<DefaultNla>,
}

impl Rtnl {
    /// RTM_*LINK: struct ifinfomsg (family, type, index, flags, change) and attributes.
    fn link(kind: u16, index: u32, flags: u32, nlas: Vec<DefaultNla>) -> Rtnl {
        let mut header = vec![0u8; 16];
        header[4..8].copy_from_slice(&index.to_ne_bytes());
        header[8..12].copy_from_slice(&flags.to_ne_bytes());
        // change mask: only the flags set here are changed.
        header[12..16].copy_from_slice(&flags.to_ne_bytes());
        Rtnl { kind, header, nlas }
    }

    /// RTM_NEWADDR of an IPv4 address on eth0: struct ifaddrmsg, IFA_LOCAL and IFA_ADDRESS.
    fn address(ip: Ipv4Addr, prefix: u8) -> Rtnl {
        let mut header = vec![libc::AF_INET as u8, prefix, 0, libc::RT_SCOPE_UNIVERSE, 0, 0, 0, 0];
        header[4..8].copy_from_slice(&ETH0_INDEX.to_ne_bytes());
        let nlas = vec![
            DefaultNla::new(libc::IFA_LOCAL, ip.octets().to_vec()),
            DefaultNla::new(libc::IFA_ADDRESS, ip.octets().to_vec()),
        ];
        Rtnl { kind: libc::RTM_NEWADDR, header, nlas }
    }

    /// RTM_NEWROUTE of the IPv4 default route via `gw` out of eth0: struct rtmsg.
    fn default_route(gw: Ipv4Addr) -> Rtnl {
        let header = vec![
            libc::AF_INET as u8,
            0, // destination prefix: the default route
            0,
            0,
            libc::RT_TABLE_MAIN,
            libc::RTPROT_BOOT,
            libc::RT_SCOPE_UNIVERSE,
            libc::RTN_UNICAST,
            0,
            0,
            0,
            0,
        ];
        let nlas = vec![
            DefaultNla::new(libc::RTA_GATEWAY, gw.octets().to_vec()),
            u32_nla(libc::RTA_OIF, ETH0_INDEX),
        ];
        Rtnl { kind: libc::RTM_NEWROUTE, header, nlas }
    }

    /// The fixed header followed by the attributes.
    fn body(&self) -> Vec<u8> {
        let mut buf = vec![0; self.buffer_len()];
        self.serialize(&mut buf);
        buf
    }

    /// The whole request, asking for an acknowledgement, as bytes.
    fn request(self, flags: u16) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(self));
        m.finalize();
        let mut buf = vec![0; m.buffer_len()];
        m.serialize(&mut buf);
        buf
    }
}

impl NetlinkSerializable for Rtnl {
    fn message_type(&self) -> u16 {
        self.kind
    }

    fn buffer_len(&self) -> usize {
        self.header.len() + self.nlas.as_slice().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        let (head, rest) = buffer.split_at_mut(self.header.len());
        head.copy_from_slice(&self.header);
        self.nlas.as_slice().emit(rest);
    }
}

fn name_nla(name: &str) -> DefaultNla {
    let mut value = name.as_bytes().to_vec();
    value.push(0);
    DefaultNla::new(libc::IFLA_IFNAME, value)
}

fn u32_nla(kind: u16, value: u32) -> DefaultNla {
    DefaultNla::new(kind, value.to_ne_bytes().to_vec())
}

fn nested(kind: u16, nlas: Vec<DefaultNla>) -> DefaultNla {
    let mut value = vec![0; nlas.as_slice().buffer_len()];
    nlas.as_slice().emit(&mut value);
    DefaultNla::new(kind, value)
}

fn if_index(name: &str) -> Result<u32, PrepareError> {
    let err = |errno| PrepareError { op: "find bridge", path: name.into(), errno };
    let c = CString::new(name).map_err(|_| err(Errno::EINVAL))?;
    // SAFETY: if_nametoindex reads a C string that lives for the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(err(Errno::ENODEV)),
        i => Ok(i),
    }
}

fn netlink_socket() -> Result<OwnedFd, PrepareError> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE)
    };
    if fd < 0 {
        return Err(PrepareError {
            op: "socket",
            path: "netlink route".into(),
            errno: Errno::last(),
        });
    }
    // SAFETY: socket just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_netns() -> Result<OwnedFd, PrepareError> {
    let path = "/proc/self/ns/net";
    std::fs::File::open(path).map(OwnedFd::from).map_err(|e| PrepareError {
        op: "open",
        path: path.into(),
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })
}

/// Sends one request on `fd` and reads its acknowledgement. Syscalls only: runs in the child.
pub fn send(fd: i32, msg: &[u8]) -> Result<(), Errno> {
    // SAFETY: send reads `msg` for the length given.
    if unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(Errno::last());
    }
    let mut reply = [0u8; 1024];
    // SAFETY: recv writes at most the buffer's length into it.
    let n = unsafe { libc::recv(fd, reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 0 {
        return Err(Errno::last());
    }
    ack_errno(&reply[..n as usize])
}

/// The outcome carried by an NLMSG_ERROR reply: 0 is the acknowledgement.
fn ack_errno(reply: &[u8]) -> Result<(), Errno> {
    if reply.len() < 20 || u16::from_ne_bytes([reply[4], reply[5]]) != libc::NLMSG_ERROR as u16 {
        return Err(Errno::EPROTO);
    }
    match i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]) {
        0 => Ok(()),
        e => Err(Errno::from_raw(-e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_end_name_fits_ifnamsiz() {
        assert_eq!(host_ifname("dns"), "vb-dns");
        assert_eq!(host_ifname("a-long-service-name").len(), 15);
    }

    #[test]
    fn veth_request_nests_the_peer_with_its_namespace() {
        let peer = Rtnl::link(0, 0, 0, vec![name_nla("vb-web"), u32_nla(libc::IFLA_NET_NS_FD, 7)]);
        let body = peer.body();
        // ifinfomsg, then IFLA_IFNAME "vb-web\0" padded to 8, then IFLA_NET_NS_FD.
        assert_eq!(body.len(), 16 + 4 + 8 + 4 + 4);
        assert_eq!(&body[16..20], &[11, 0, libc::IFLA_IFNAME as u8, 0]);
        assert_eq!(&body[20..27], b"vb-web\0");
        assert_eq!(&body[28..32], &[8, 0, libc::IFLA_NET_NS_FD as u8, 0]);
        assert_eq!(&body[32..36], &7u32.to_ne_bytes());
        let route = Rtnl::default_route(Ipv4Addr::new(10, 0, 3, 1)).request(NLM_F_CREATE);
        assert_eq!(u16::from_ne_bytes([route[4], route[5]]), libc::RTM_NEWROUTE);
        assert_eq!(&route[16 + 12 + 4..16 + 12 + 8], &[10, 0, 3, 1]);
    }

    #[test]
    fn requests_ask_for_an_ack_and_acks_decode() {
        let msg = Rtnl::link(libc::RTM_SETLINK, 2, 1, Vec::new()).request(0);
        let flags = u16::from_ne_bytes([msg[6], msg[7]]);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize, msg.len());
        let mut ack = [0u8; 36];
        ack[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        assert_eq!(ack_errno(&ack), Ok(()));
        ack[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert_eq!(ack_errno(&ack), Err(Errno::EEXIST));
        assert_eq!(ack_errno(&[0u8; 8]), Err(Errno::EPROTO));
    }
}
