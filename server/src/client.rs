//! The client's address: the TCP peer, or, behind trusted reverse proxies, the nearest address
//! in `X-Forwarded-For` that is not one of them.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// The TCP peer of a connection, put in each request's extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|n| n.contains(&ip))
}

/// The client address for a request from `peer`. When the peer is a trusted proxy, the
/// `X-Forwarded-For` hops are walked from the nearest (rightmost) back, and the first one that
/// is not a trusted proxy is the client; if every hop is trusted, the farthest one is. An
/// unparsable hop stops the walk there (anything left of it could be forged), and the last
/// trusted address is taken.
pub fn client_ip(headers: &HeaderMap, peer: Option<IpAddr>, proxies: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    if !trusted(peer, proxies) {
        return Some(peer);
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>().map(|i| i.to_canonical()) else {
            break;
        };
        client = ip;
        if !trusted(ip, proxies) {
            break;
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(xff: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in xff {
            m.append("x-forwarded-for", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn forwarded_for() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(client_ip(&h(&["1.2.3.4"]), ip("192.0.2.9"), &proxies), ip("192.0.2.9"));
        // A trusted peer: the nearest untrusted hop.
        assert_eq!(
            client_ip(&h(&["6.6.6.6, 1.2.3.4, 10.0.0.2"]), ip("10.0.0.1"), &proxies),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_ip(&h(&["6.6.6.6", "1.2.3.4"]), ip("::1"), &proxies),
            ip("1.2.3.4")
        );
        // No header: the proxy itself. All hops trusted: the farthest.
        assert_eq!(client_ip(&h(&[]), ip("10.0.0.1"), &proxies), ip("10.0.0.1"));
        assert_eq!(
            client_ip(&h(&["10.9.9.9, 10.0.0.2"]), ip("10.0.0.1"), &proxies),
            ip("10.9.9.9")
        );
        // Garbage stops the walk at the last good trusted hop.
        assert_eq!(
            client_ip(&h(&["1.2.3.4, junk, 10.0.0.2"]), ip("10.0.0.1"), &proxies),
            ip("10.0.0.2")
        );
        // IPv4-mapped peers on a dual-stack socket are IPv4.
        assert_eq!(
            client_ip(&h(&["1.2.3.4"]), ip("::ffff:10.0.0.1"), &proxies),
            ip("1.2.3.4")
        );
        assert_eq!(client_ip(&h(&[]), None, &proxies), None);
    }
}
