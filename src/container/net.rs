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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;

use super::{Op, PrepareError};
use crate::config::isolation::BridgeNet;

/// The ifindex `eth0` is created with: the first free one in a fresh namespace (lo is 1).
const ETH0_INDEX: u32 = 2;

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
    let mut ops = Vec::new();

    // A host end left by a container whose namespace is still being torn down.
    let mut stale = LinkMessage::default();
    stale.attributes.push(LinkAttribute::IfName(host_name.clone()));
    ops.push((
        format!("delete stale {host_name}"),
        Op::Netlink {
            host,
            msg: request(RouteNetlinkMessage::DelLink(stale), 0),
            ignore: Some(Errno::ENODEV),
        },
    ));

    let mut peer = LinkMessage::default();
    peer.attributes.push(LinkAttribute::IfName(host_name.clone()));
    peer.attributes.push(LinkAttribute::NetNsFd(fds.netns.as_raw_fd()));
    let mut veth = LinkMessage::default();
    veth.header.index = ETH0_INDEX;
    veth.attributes.push(LinkAttribute::IfName("eth0".into()));
    veth.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    ops.push((
        format!("create veth eth0 with peer {host_name}"),
        Op::Netlink {
            host: None,
            msg: request(RouteNetlinkMessage::NewLink(veth), NLM_F_CREATE | NLM_F_EXCL),
            ignore: None,
        },
    ));

    let mut host_end = LinkMessage::default();
    host_end.header.flags = LinkFlags::Up;
    host_end.header.change_mask = LinkFlags::Up;
    host_end.attributes.push(LinkAttribute::IfName(host_name.clone()));
    host_end.attributes.push(LinkAttribute::Controller(bridge_index));
    ops.push((
        format!("attach {host_name} to bridge {} and set it up", b.bridge),
        Op::Netlink { host, msg: request(RouteNetlinkMessage::SetLink(host_end), 0), ignore: None },
    ));

    let mut eth0 = LinkMessage::default();
    eth0.header.index = ETH0_INDEX;
    eth0.header.flags = LinkFlags::Up;
    eth0.header.change_mask = LinkFlags::Up;
    ops.push((
        "set eth0 up".into(),
        Op::Netlink {
            host: None,
            msg: request(RouteNetlinkMessage::SetLink(eth0), 0),
            ignore: None,
        },
    ));

    let mut addr = AddressMessage::default();
    addr.header.family = AddressFamily::Inet;
    addr.header.prefix_len = b.prefix;
    addr.header.index = ETH0_INDEX;
    addr.attributes.push(AddressAttribute::Local(b.address.into()));
    addr.attributes.push(AddressAttribute::Address(b.address.into()));
    ops.push((
        format!("add address {}/{} to eth0", b.address, b.prefix),
        Op::Netlink {
            host: None,
            msg: request(RouteNetlinkMessage::NewAddress(addr), NLM_F_CREATE | NLM_F_EXCL),
            ignore: None,
        },
    ));

    if let Some(gw) = b.gateway {
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.table = RouteHeader::RT_TABLE_MAIN;
        route.header.protocol = RouteProtocol::Boot;
        route.header.scope = RouteScope::Universe;
        route.header.kind = RouteType::Unicast;
        route.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        route.attributes.push(RouteAttribute::Oif(ETH0_INDEX));
        ops.push((
            format!("add default route via {gw}"),
            Op::Netlink {
                host: None,
                msg: request(RouteNetlinkMessage::NewRoute(route), NLM_F_CREATE | NLM_F_EXCL),
                ignore: None,
            },
        ));
    }
    Ok((fds, ops))
}

/// One rtnetlink request asking for an acknowledgement, as bytes.
fn request(msg: RouteNetlinkMessage, flags: u16) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let mut buf = vec![0; m.buffer_len()];
    m.serialize(&mut buf);
    buf
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
    fn requests_ask_for_an_ack_and_acks_decode() {
        let msg = request(RouteNetlinkMessage::SetLink(LinkMessage::default()), 0);
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
