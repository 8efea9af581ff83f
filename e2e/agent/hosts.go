package main

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// renderHosts is the tier's DNS: one hosts file shared by every pod, built
// from pods, Services and EndpointSlices, with the names cluster DNS
// (CoreDNS) would serve:
//
//   - <svc>.<ns>.svc[.<domain>] → the ClusterIP for a normal Service (routed
//     by kube-proxy), whether or not it has ready
//     endpoints;
//   - for a headless Service (clusterIP: None) the same name → each ready
//     endpoint's pod IP, one line per address (glibc's `multi on` returns
//     them all), and <hostname>.<svc>.<ns>.svc[...] for endpoints with a
//     hostname;
//   - <hostname>.<subdomain>.<ns>.svc[.<domain>] for pods with a hostname and
//     subdomain (StatefulSet pods behind their headless Service).
//
// Only endpoints whose ready condition is not false are listed (the
// EndpointSlice controller already counts publishNotReadyAddresses as ready).
// The output is sorted so an unchanged cluster gives an unchanged file.
func renderHosts(pods []*corev1.Pod, svcs []*corev1.Service, slices []*discoveryv1.EndpointSlice, domain string) string {
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
	headless := map[string]bool{}
	for _, svc := range svcs {
		fq := fmt.Sprintf("%s.%s.svc", svc.Name, svc.Namespace)
		switch {
		case hasClusterIP(svc):
			add(svc.Spec.ClusterIP, fq+"."+domain, fq)
		case svc.Spec.ClusterIP == corev1.ClusterIPNone:
			headless[svc.Namespace+"/"+svc.Name] = true
		}
	}
	for _, s := range slices {
		svc := s.Labels[discoveryv1.LabelServiceName]
		if svc == "" || !headless[s.Namespace+"/"+svc] {
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
	b.WriteString("# written by kindex-agent from Pods, Services and EndpointSlices\n")
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	for _, l := range sorted {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}

// hasClusterIP: the Service gets a virtual IP that kube-proxy routes
// (not headless, not ExternalName).
func hasClusterIP(svc *corev1.Service) bool {
	return svc.Spec.Type != corev1.ServiceTypeExternalName &&
		svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone
}
