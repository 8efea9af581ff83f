package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/kubelet/pkg/cri/streaming/portforward"
)

// portForwardHandler serves /portForward/{namespace}/{pod}[/{uid}] itself.
// virtual-kubelet v1.12.0's handler passes empty V4Options to
// ServePortForward, so a WebSocket port-forward (the protocol kube-rs, and so
// `kubectl kindex`, speaks) gets no ports and fails; SPDY (kubectl) works
// either way. This parses the ports from the request as a kubelet does.
func portForwardHandler(pr *provider) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		parts := strings.Split(strings.TrimPrefix(req.URL.Path, "/portForward/"), "/")
		if len(parts) < 2 || parts[0] == "" || parts[1] == "" {
			http.Error(w, "want /portForward/{namespace}/{pod}", http.StatusBadRequest)
			return
		}
		ns, pod := parts[0], parts[1]
		opts, err := portforward.NewV4Options(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		protocols := strings.Split(req.Header.Get("X-Stream-Protocol-Version"), ",")
		portforward.ServePortForward(w, req, forwarder{pr: pr, ns: ns}, pod, "", opts,
			30*time.Minute, 30*time.Second, protocols)
	})
}

type forwarder struct {
	pr *provider
	ns string
}

func (f forwarder) PortForward(ctx context.Context, pod string, _ types.UID, port int32, stream io.ReadWriteCloser) error {
	return f.pr.PortForward(ctx, f.ns, pod, port, stream)
}
