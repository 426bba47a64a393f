"""Host networking for virtfleet: bridges, taps, nftables NAT/isolation and per-network dnsmasq."""
