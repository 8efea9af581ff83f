package main

import (
	"net"
	"sort"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// svcPort is one ClusterIP:port of a Service and the ready endpoints it
// routes to: what kube-proxy programs for it. No endpoints means
// connections to it are refused (as kube-proxy's reject rules do).
type svcPort struct {
	name      string // namespace/service:port (port name or number), for logs and tests
	clusterIP string
	proto     corev1.Protocol // TCP or UDP
	port      int32
	endpoints []string // "ip:port", sorted, no duplicates
}

// buildProxy is kube-proxy's view of the cluster: every port of every
// Service with an IPv4 ClusterIP, with the ready IPv4 endpoints of the
// Service's EndpointSlices for that port. Headless and ExternalName
// Services get nothing (they are DNS-only); SCTP ports are left out.
// An endpoint counts as ready unless its ready condition is false, as in
// kube-proxy. The result is sorted, so an unchanged cluster gives an equal
// result.
func buildProxy(svcs []*corev1.Service, slices []*discoveryv1.EndpointSlice) []svcPort {
	byService := map[string][]*discoveryv1.EndpointSlice{}
	for _, s := range slices {
		if name := s.Labels[discoveryv1.LabelServiceName]; name != "" && s.AddressType == discoveryv1.AddressTypeIPv4 {
			k := s.Namespace + "/" + name
			byService[k] = append(byService[k], s)
		}
	}
	var out []svcPort
	for _, svc := range svcs {
		if !hasClusterIP(svc) {
			continue
		}
		ip := net.ParseIP(svc.Spec.ClusterIP)
		if ip == nil || ip.To4() == nil {
			continue
		}
		key := svc.Namespace + "/" + svc.Name
		for _, sp := range svc.Spec.Ports {
			proto := sp.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			if proto != corev1.ProtocolTCP && proto != corev1.ProtocolUDP {
				continue
			}
			label := sp.Name
			if label == "" {
				label = strconv.Itoa(int(sp.Port))
			}
			p := svcPort{name: key + ":" + label, clusterIP: ip.To4().String(), proto: proto, port: sp.Port}
			seen := map[string]bool{}
			for _, s := range byService[key] {
				epPort := slicePort(s, sp.Name, proto)
				if epPort == 0 {
					continue
				}
				for _, ep := range s.Endpoints {
					if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
						continue
					}
					for _, a := range ep.Addresses {
						if ip := net.ParseIP(a); ip == nil || ip.To4() == nil {
							continue
						}
						e := net.JoinHostPort(a, strconv.Itoa(int(epPort)))
						if !seen[e] {
							seen[e] = true
							p.endpoints = append(p.endpoints, e)
						}
					}
				}
			}
			sort.Strings(p.endpoints)
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// hasClusterIP: the Service gets a virtual IP that kube-proxy routes
// (not headless, not ExternalName).
func hasClusterIP(svc *corev1.Service) bool {
	return svc.Spec.Type != corev1.ServiceTypeExternalName &&
		svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone
}

// slicePort is the EndpointSlice's port number for the Service port of
// that name (EndpointSlice ports carry the Service port's name), 0 if none.
func slicePort(s *discoveryv1.EndpointSlice, name string, proto corev1.Protocol) int32 {
	for _, p := range s.Ports {
		pn, pp := "", corev1.ProtocolTCP
		if p.Name != nil {
			pn = *p.Name
		}
		if p.Protocol != nil {
			pp = *p.Protocol
		}
		if pn == name && pp == proto && p.Port != nil {
			return *p.Port
		}
	}
	return 0
}
