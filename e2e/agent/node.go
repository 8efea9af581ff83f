package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

const kubeletVersion = "v1.34.10"

// newNode builds one virtual-kubelet Node served by the shared runtime: its
// own Node object, lease, pod controller and kubelet API listener.
func newNode(_ context.Context, rt *Runtime, name string, port int) (*nodeutil.Node, error) {
	cert, err := selfSignedCert(name, rt.cfg.nodeIP)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	pr := &provider{rt: rt, node: name}
	// More specific than the "/" virtual-kubelet attaches: ours wins.
	mux.Handle("/portForward/", portForwardHandler(pr))
	return nodeutil.NewNode(name,
		func(pc nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
			return pr, nil, nil
		},
		nodeutil.WithClient(rt.client),
		func(c *nodeutil.NodeConfig) error {
			c.HTTPListenAddr = net.JoinHostPort(rt.cfg.nodeIP, strconv.Itoa(port))
			c.Handler = mux
			c.NumWorkers = 4
			// The runtime resolves env (downward API incl. status.podIP) itself.
			c.SkipDownwardAPIResolution = true
			c.StreamIdleTimeout = 30 * time.Minute
			c.StreamCreationTimeout = 30 * time.Second
			c.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			describeNode(&c.NodeSpec, name, rt.cfg.nodeIP, port)
			return nil
		},
		nodeutil.AttachProviderRoutes(mux),
	)
}

// describeNode fills in what a kubelet reports: addresses (InternalIP only, so
// the API server reaches the kubelet API by IP), the kubelet port, capacity,
// and the well-known labels the scheduler's topology rules use.
func describeNode(n *corev1.Node, name, ip string, port int) {
	n.Labels["kubernetes.io/os"] = "linux"
	n.Labels["kubernetes.io/arch"] = runtime.GOARCH
	n.Labels["kubernetes.io/hostname"] = name
	n.Labels["node-role.kubernetes.io/worker"] = ""
	res := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("16"),
		corev1.ResourceMemory:           resource.MustParse("64Gi"),
		corev1.ResourcePods:             resource.MustParse("110"),
		corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
	n.Status.Capacity = res
	n.Status.Allocatable = res.DeepCopy()
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(port)
	n.Status.NodeInfo = corev1.NodeSystemInfo{
		KubeletVersion:          kubeletVersion,
		OperatingSystem:         "linux",
		Architecture:            runtime.GOARCH,
		ContainerRuntimeVersion: "kindex-agent://1",
	}
}

// selfSignedCert is the kubelet API's serving certificate. The API server
// runs without --kubelet-certificate-authority, so it does not verify it.
func selfSignedCert(name, ip string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP(ip)},
		DNSNames:     []string{name},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("kubelet serving certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
