package main

import (
	"fmt"
	"net"
	"strconv"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

// The tier's kube-proxy, in the manner of kube-proxy's nftables mode, in
// the agent's (the tier's) network namespace:
//
//	nat-prerouting / nat-output   jump services
//	services                      ip daddr CIP l4proto P th dport PORT goto svc-N
//	svc-N                         numgen random mod K vmap { 0: goto ep-N-0, ... }
//	ep-N-I                        ip saddr EP mark 0x4000 (hairpin); dnat to EP:PORT
//	nat-postrouting               mark 0x4000 → masquerade
//	filter-forward / -output      no-endpoints: ClusterIP ports without a ready
//	                              endpoint are refused (TCP reset, ICMP port
//	                              unreachable for UDP)
//
// Pod-to-pod replies cross the bridge without routing; the bridge netfilter
// hooks (net.bridge.bridge-nf-call-iptables=1, the kernel's default) send
// them through conntrack so the DNAT is undone.
const (
	proxyTable = "kindex-proxy"
	masqMark   = 0x4000
)

// programProxy replaces the whole table in one netlink transaction, so a
// packet sees either the old rules or the new ones.
func programProxy(ports []svcPort) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: proxyTable}
	c.AddTable(t) // so that the delete below never fails on a first run
	c.DelTable(t)
	c.AddTable(t)
	if err := addProxyRules(c, t, ports); err != nil {
		return err
	}
	return c.Flush()
}

func addProxyRules(c *nftables.Conn, t *nftables.Table, ports []svcPort) error {
	chain := func(name string) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: t})
	}
	base := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio})
	}
	rule := func(ch *nftables.Chain, e ...expr.Any) { c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e}) }
	jump := func(kind expr.VerdictKind, to string) expr.Any { return &expr.Verdict{Kind: kind, Chain: to} }

	services := chain("services")
	noEndpoints := chain("no-endpoints")
	rule(base("nat-prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest), jump(expr.VerdictJump, services.Name))
	rule(base("nat-output", nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest), jump(expr.VerdictJump, services.Name))
	rule(base("nat-postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(masqMark), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		&expr.Masq{})
	filterPrio := nftables.ChainPriorityRef(-110) // before DNAT, as kube-proxy's filter chains
	rule(base("filter-forward", nftables.ChainTypeFilter, nftables.ChainHookForward, filterPrio), jump(expr.VerdictJump, noEndpoints.Name))
	rule(base("filter-output", nftables.ChainTypeFilter, nftables.ChainHookOutput, filterPrio), jump(expr.VerdictJump, noEndpoints.Name))

	for n, p := range ports {
		cip := net.ParseIP(p.clusterIP).To4()
		if cip == nil {
			return fmt.Errorf("%s: bad ClusterIP %q", p.name, p.clusterIP)
		}
		l4 := byte(unix.IPPROTO_TCP)
		if p.proto == corev1.ProtocolUDP {
			l4 = unix.IPPROTO_UDP
		}
		match := []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}, // ip daddr
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: cip},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{l4}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}, // th dport
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(p.port))},
		}
		if len(p.endpoints) == 0 {
			reject := &expr.Reject{Type: unix.NFT_REJECT_TCP_RST}
			if l4 == unix.IPPROTO_UDP {
				reject = &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3} // port unreachable
			}
			rule(noEndpoints, append(match, reject)...)
			continue
		}
		svc := chain(fmt.Sprintf("svc-%d", n))
		rule(services, append(match, jump(expr.VerdictGoto, svc.Name))...)
		vmap := &nftables.Set{Table: t, Anonymous: true, Constant: true, IsMap: true,
			KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict}
		var elems []nftables.SetElement
		for i, e := range p.endpoints {
			host, portStr, err := net.SplitHostPort(e)
			epIP := net.ParseIP(host).To4()
			epPort, perr := strconv.ParseUint(portStr, 10, 16)
			if err != nil || epIP == nil || perr != nil {
				return fmt.Errorf("%s: bad endpoint %q", p.name, e)
			}
			ep := chain(fmt.Sprintf("ep-%d-%d", n, i))
			// Hairpin: a pod reaching a Service whose chosen endpoint is
			// itself; masqueraded so the reply comes back through the host.
			rule(ep,
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}, // ip saddr
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: epIP},
				&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(masqMark)},
				&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1})
			rule(ep,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{l4}},
				&expr.Immediate{Register: 1, Data: epIP},
				&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(uint16(epPort))},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true})
			elems = append(elems, nftables.SetElement{
				Key:         binaryutil.NativeEndian.PutUint32(uint32(i)),
				VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: ep.Name},
			})
		}
		if err := c.AddSet(vmap, elems); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		rule(svc,
			&expr.Numgen{Register: 1, Modulus: uint32(len(p.endpoints)), Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: vmap.Name, SetID: vmap.ID})
	}
	return nil
}
