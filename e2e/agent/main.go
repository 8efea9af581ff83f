// Command kindex-agent is the full-stack tier's node agent: it registers one
// or more Nodes (virtual-kubelet as a library) and runs the pods scheduled on
// them as local processes, each pod in its own network + UTS namespace with
// an IP on the tier's bridge, each container in its own mount namespace
// (an overlay of / with the pod's volumes bound in, then chroot).
//
// It must run as root inside the namespace the tier's run script creates
// (e2e/fullstack/run.sh): it adds veth links to the bridge given by --bridge,
// and never touches the root network namespace.
//
// Usage:
//
//	kindex-agent --kubeconfig KC --nodes n1,n2,n3 --images FILE --run-dir DIR ...
//	kindex-agent hold HOSTNAME           (internal) a pod's namespace holder
//	kindex-agent container-init SPEC     (internal) set up a container's root, then exec
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	vklogrus "github.com/virtual-kubelet/virtual-kubelet/log/logrus"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

var logger = log.New(os.Stderr, "kindex-agent: ", log.Ltime|log.Lmicroseconds)

// config is everything the runtime needs from the command line.
type config struct {
	kubeconfig    string
	nodes         []string
	nodeIP        string // the agent's address on the bridge: Node InternalIP, kubelet API, pods' gateway
	portBase      int
	imagesFile    string
	images        map[string]imageInfo
	runDir        string
	bridge        string
	podCIDR       *net.IPNet
	apiHost       string // KUBERNETES_SERVICE_HOST/PORT for pods only while the kubernetes Service has no ClusterIP
	apiPort       string
	clusterDomain string
	backoffBase   time.Duration
	backoffMax    time.Duration
	self          string // this binary, for the hold / container-init subcommands
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "hold":
			os.Exit(holdMain(os.Args[2:]))
		case "container-init":
			os.Exit(containerInitMain(os.Args[2:]))
		}
	}
	os.Exit(run(os.Args[1:]))
}

func parseFlags(args []string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("kindex-agent", flag.ContinueOnError)
	var nodes, cidr string
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "admin kubeconfig of the tier's API server")
	fs.StringVar(&nodes, "nodes", "kindex-node-1", "comma-separated Node names this agent serves")
	fs.StringVar(&c.nodeIP, "node-ip", "10.244.0.1", "the agent's address on the pod bridge")
	fs.IntVar(&c.portBase, "port-base", 10250, "kubelet API port of the first node; node i listens on port-base+i")
	fs.StringVar(&c.imagesFile, "images", "", "image map file: lines `IMAGE[:TAG] BINARY [user=UID[:GID]] [workdir=DIR]` (untagged: every tag without its own line)")
	fs.StringVar(&c.runDir, "run-dir", "", "directory for pod state, logs and volumes")
	fs.StringVar(&c.bridge, "bridge", "kbr0", "bridge the pods' veth links are attached to")
	fs.StringVar(&cidr, "pod-cidr", "10.244.0.0/24", "pod addresses are taken from this range")
	fs.StringVar(&c.apiHost, "apiserver-host", "10.244.0.1", "KUBERNETES_SERVICE_HOST given to pods if the default/kubernetes Service has no ClusterIP")
	fs.StringVar(&c.apiPort, "apiserver-port", "", "KUBERNETES_SERVICE_PORT given to pods if the default/kubernetes Service has no ClusterIP")
	fs.StringVar(&c.clusterDomain, "cluster-domain", "cluster.local", "cluster DNS domain")
	fs.DurationVar(&c.backoffBase, "crash-backoff-base", 10*time.Second, "first CrashLoopBackOff delay (doubles per crash)")
	fs.DurationVar(&c.backoffMax, "crash-backoff-max", 5*time.Minute, "CrashLoopBackOff delay cap")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if c.kubeconfig == "" || c.imagesFile == "" || c.runDir == "" || c.apiPort == "" {
		return nil, fmt.Errorf("--kubeconfig, --images, --run-dir and --apiserver-port are required")
	}
	for _, n := range strings.Split(nodes, ",") {
		if n = strings.TrimSpace(n); n != "" {
			c.nodes = append(c.nodes, n)
		}
	}
	if len(c.nodes) == 0 {
		return nil, fmt.Errorf("--nodes: no node name")
	}
	_, ipnet, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("--pod-cidr: %w", err)
	}
	c.podCIDR = ipnet
	f, err := os.ReadFile(c.imagesFile)
	if err != nil {
		return nil, err
	}
	if c.images, err = parseImageMap(string(f)); err != nil {
		return nil, fmt.Errorf("%s: %w", c.imagesFile, err)
	}
	if c.self, err = os.Executable(); err != nil {
		return nil, err
	}
	return c, nil
}

func run(args []string) int {
	c, err := parseFlags(args)
	if err != nil {
		logger.Print(err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// virtual-kubelet logs nothing unless given a logger; its warnings and
	// errors (failed status updates, ...) go to stderr with ours.
	lr := logrus.New()
	lr.SetOutput(os.Stderr)
	lr.SetLevel(logrus.InfoLevel)
	vklog.L = vklogrus.FromLogrus(logrus.NewEntry(lr))
	ctx = vklog.WithLogger(ctx, vklog.L)

	restCfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		logger.Print(err)
		return 1
	}
	restCfg.QPS, restCfg.Burst = 50, 100
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		logger.Print(err)
		return 1
	}
	rt, err := newRuntime(c, client)
	if err != nil {
		logger.Print(err)
		return 1
	}
	defer rt.shutdown()

	// Cluster-wide informers for DNS (pods, Services, EndpointSlices) and
	// volumes (ConfigMaps, Secrets).
	factory := informers.NewSharedInformerFactory(client, 5*time.Minute)
	rt.startInformers(ctx, factory)
	rt.startDNSLoop(ctx)

	errs := make(chan error, len(c.nodes))
	for i, name := range c.nodes {
		n, err := newNode(ctx, rt, name, c.portBase+i)
		if err != nil {
			logger.Printf("node %s: %v", name, err)
			return 1
		}
		go func() { errs <- n.Run(ctx) }()
		if err := n.WaitReady(ctx, time.Minute); err != nil {
			logger.Printf("node %s not ready: %v", name, err)
			return 1
		}
		logger.Printf("node %s ready (kubelet API %s:%d)", name, c.nodeIP, c.portBase+i)
	}
	fmt.Println("READY")
	select {
	case <-ctx.Done():
		logger.Print("stopping")
		return 0
	case err := <-errs:
		logger.Printf("a node stopped: %v", err)
		return 1
	}
}
