package main

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// renderHosts is the tier's DNS: one hosts file shared by every pod, built
// from pods and EndpointSlices, with the names cluster DNS would serve:
//
//   - <hostname>.<subdomain>.<ns>.svc[.<domain>] for pods with a hostname and
//     subdomain (StatefulSet pods behind their headless Service);
//   - <svc>.<ns>.svc[.<domain>] for each endpoint address of a Service, one
//     line per address (glibc's `multi on` returns them all). Without
//     kube-proxy a ClusterIP is not routable, so a Service name resolves to its
//     endpoints' pod IPs for ClusterIP Services too (as a headless one would).
//
// Only endpoints whose ready condition is not false are listed (the
// EndpointSlice controller already counts publishNotReadyAddresses as ready).
// The output is sorted so an unchanged cluster gives an unchanged file.
func renderHosts(pods []*corev1.Pod, slices []*discoveryv1.EndpointSlice, domain string) string {
	lines := map[string]bool{}
	add := func(ip string, names ...string) {
		lines[fmt.Sprintf("%s\t%s", ip, strings.Join(names, " "))] = true
	}
	for _, p := range pods {
		if p.Status.PodIP == "" || p.DeletionTimestamp != nil && p.Status.Phase != corev1.PodRunning {
			continue
		}
		if p.Spec.Hostname != "" && p.Spec.Subdomain != "" {
			fq := fmt.Sprintf("%s.%s.%s.svc", p.Spec.Hostname, p.Spec.Subdomain, p.Namespace)
			add(p.Status.PodIP, fq+"."+domain, fq)
		}
	}
	for _, s := range slices {
		svc := s.Labels[discoveryv1.LabelServiceName]
		if svc == "" {
			continue
		}
		fq := fmt.Sprintf("%s.%s.svc", svc, s.Namespace)
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, ip := range ep.Addresses {
				add(ip, fq+"."+domain, fq)
				if ep.Hostname != nil && *ep.Hostname != "" {
					h := *ep.Hostname + "." + fq
					add(ip, h+"."+domain, h)
				}
			}
		}
	}
	sorted := make([]string, 0, len(lines))
	for l := range lines {
		sorted = append(sorted, l)
	}
	sort.Strings(sorted)
	var b strings.Builder
	b.WriteString("# written by kindex-agent from Pods and EndpointSlices\n")
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	for _, l := range sorted {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}
