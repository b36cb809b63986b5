//! Reaching host services: TCP on the host's loopback, abstract unix sockets, raw sockets,
//! SysV IPC.

use std::io::ErrorKind;
use std::net::TcpListener;

use crate::common::{self, Net, PAYLOAD_DONE, Sandbox, User, unique};

fn connect_host_listener(user: User, net: Net, allowed: &[&str]) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut sb = Sandbox::new().network(net);
    let out = sb.run_py(
        user,
        r#"
port = int(sys.argv[1])
def connect(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect(addr)
    return "connected"
attempt("connect4", lambda: connect(socket.AF_INET, ("127.0.0.1", port)))
attempt("connect6", lambda: connect(socket.AF_INET6, ("::ffff:127.0.0.1", port, 0, 0)))
sys.exit(42)
"#,
        &[&port],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("connect4", allowed)
        .assert_value_in("connect6", allowed);
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the host listener got a connection: {other:?}\n{out}"),
    }
}

pub(crate) fn connect_host_listener_network_none(user: User) {
    // Only AF_UNIX sockets (seccomp EPERM) and Landlock denies TCP connect (EACCES).
    connect_host_listener(user, Net::None, &["EPERM", "EACCES"]);
}

pub(crate) fn connect_host_listener_network_loopback(user: User) {
    // The sandbox's own `lo` is up but nothing listens there: refused, never the host's.
    connect_host_listener(user, Net::Loopback, &["ECONNREFUSED"]);
}

fn raw_socket(user: User, family: u32, proto: u32) {
    for net in [Net::None, Net::Loopback] {
        let mut sb = Sandbox::new().network(net);
        let out = sb.run_py(
            user,
            r#"
family, proto = int(sys.argv[1]), int(sys.argv[2])
attempt("raw", lambda: socket.socket(family, socket.SOCK_RAW, proto).fileno())
# The kernel reads the family as a 32-bit int; high bits must not slip past the filter.
attempt("raw_high_bits", lambda: sysc(41, ctypes.c_long((1 << 32) | family), socket.SOCK_RAW, proto))
attempt("dgram", lambda: socket.socket(family, socket.SOCK_DGRAM, proto).fileno())
attempt("unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).fileno() >= 0)
sys.exit(42)
"#,
            &[&family.to_string(), &proto.to_string()],
        );
        out.assert_code(PAYLOAD_DONE)
            .assert_line("unix: OK True")
            .assert_value_in("raw", &["EPERM", "EACCES"])
            .assert_value_in("raw_high_bits", &["EPERM", "EACCES"])
            .assert_value_in("dgram", &["EPERM", "EACCES"]);
    }
}

pub(crate) fn netlink_socket(user: User) {
    // AF_NETLINK = 16, NETLINK_ROUTE = 0: normally open to any user, so only calyx stops it.
    raw_socket(user, 16, 0);
}

pub(crate) fn packet_socket(user: User) {
    // AF_PACKET = 17, protocol htons(ETH_P_ALL = 3) = 0x0300.
    raw_socket(user, 17, 0x0300);
}

pub(crate) fn connect_host_abstract_unix_socket(user: User) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    // Abstract sockets are per network namespace and bypass the filesystem: a host daemon
    // listening on one (X11, dbus, container runtimes) must stay out of reach.
    let name = unique("calyx-abstract");
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = UnixListener::bind_addr(&addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    for net in [Net::None, Net::Loopback] {
        let mut sb = Sandbox::new().network(net);
        let out = sb.run_py(
            user,
            r#"
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect("\0" + sys.argv[1])
    return "connected"
attempt("abstract", connect)
sys.exit(42)
"#,
            &[&name],
        );
        out.assert_code(PAYLOAD_DONE)
            .assert_value_in("abstract", &["ECONNREFUSED", "EPERM", "EACCES"]);
    }
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the host abstract socket got a connection: {other:?}"),
    }
}

/// Creates (`key`, mode 0666) or removes (`-id`) a SysV shared memory segment on the host.
const HOST_SHM: &str = r#"
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
arg = int(sys.argv[1])
if arg > 0:
    print(libc.shmget(arg, 4096, 0o1666))
else:
    print(libc.shmctl(-arg, 0, None))
"#;

pub(crate) fn host_sysv_shared_memory(user: User) {
    // The IPC namespace: a world-accessible segment on the host must not be reachable.
    let key = 0x4341_0000 + (std::process::id() % 0xffff);
    let made = common::host(&[
        common::PYTHON.as_ref(),
        "-c".as_ref(),
        HOST_SHM.as_ref(),
        key.to_string().as_ref(),
    ]);
    let id: i64 = made.stdout.trim().parse().unwrap_or(-1);
    assert!(id >= 0, "could not create the host segment: {made}");
    let mut sb = Sandbox::new();
    let out = sb.run_py(
        user,
        r#"
key = int(sys.argv[1])
attempt("shmget", lambda: sysc(29, key, 0, 0))
attempt("listed", lambda: str(key) in open("/proc/sysvipc/shm").read())
sys.exit(42)
"#,
        &[&key.to_string()],
    );
    common::host(&[
        common::PYTHON.as_ref(),
        "-c".as_ref(),
        HOST_SHM.as_ref(),
        format!("-{id}").as_ref(),
    ]);
    out.assert_code(PAYLOAD_DONE)
        .assert_value_in("shmget", &["ENOENT", "EPERM"])
        .assert_value_in("listed", &["OK False", "ENOENT", "EACCES"]);
}

pub(crate) fn rare_socket_families(user: User) {
    // Families with a history of kernel bugs, under the more permissive network mode: only
    // AF_UNIX, AF_INET and AF_INET6 exist for the payload, and raw IP needs CAP_NET_RAW.
    let mut sb = Sandbox::new().network(Net::Loopback);
    let out = sb.run_py(
        user,
        r#"
families = {"AF_KEY": 15, "AF_RDS": 21, "AF_CAN": 29, "AF_TIPC": 30, "AF_BLUETOOTH": 31,
            "AF_ALG": 38, "AF_VSOCK": 40, "AF_XDP": 44, "AF_X25": 9, "AF_APPLETALK": 5}
for name, fam in families.items():
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET, socket.SOCK_RAW):
        try:
            s = socket.socket(fam, kind, 0)
            print(f"{name}/{kind}: OK", flush=True)
            s.close()
        except OSError as e:
            if e.errno != errno.EPERM:
                print(f"{name}/{kind}: {errno.errorcode.get(e.errno, e.errno)}", flush=True)
attempt("inet_raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).fileno())
attempt("inet_stream", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).fileno() >= 0)
sys.exit(42)
"#,
        &[],
    );
    out.assert_code(PAYLOAD_DONE)
        .assert_line("inet_stream: OK True")
        .assert_value_in("inet_raw", &["EPERM"]);
    // Every family/type pair must have been EPERM (those lines are not printed).
    let other: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("AF_"))
        .collect();
    assert!(
        other.is_empty(),
        "families not refused by the filter: {other:?}\n{out}"
    );
}
