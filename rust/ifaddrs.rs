//! The host's interface addresses, from getifaddrs(3).
//!
//! jupyter_client finds local IPs by running `ip addr`/`ifconfig` and parsing
//! their output (a subprocess at first use); the kernel already keeps the list.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::{Error, Result};

/// Every address configured on an interface that is up, in the kernel's order.
pub fn interface_addresses() -> Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(Error::os(
            "listing interface addresses",
            std::io::Error::last_os_error(),
        ));
    }
    let mut out = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getifaddrs returned, which stays valid
        // until freeifaddrs; ifa_addr may be null and is checked.
        let entry = unsafe { &*cursor };
        let up = entry.ifa_flags & (libc::IFF_UP as libc::c_uint) != 0;
        if up && !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr is non-null and points to a sockaddr whose family
            // field tells which concrete struct it is.
            if let Some(addr) = unsafe { sockaddr_ip(entry.ifa_addr) } {
                if !out.contains(&addr) {
                    out.push(addr);
                }
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// # Safety
/// `sa` must point to a valid sockaddr of the size its family implies.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    match i32::from((*sa).sa_family) {
        libc::AF_INET => {
            let sin = &*sa.cast::<libc::sockaddr_in>();
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            let sin6 = &*sa.cast::<libc::sockaddr_in6>();
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed() {
        let addrs = interface_addresses().expect("getifaddrs");
        assert!(addrs.iter().any(|a| a.is_loopback()), "{addrs:?}");
    }
}
