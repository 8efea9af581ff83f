package main

import (
	"flag"
	"fmt"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const contextName = "kindex-testenv"

// writeKubeconfig writes a kubeconfig that talks to server as the holder of
// token, verifying TLS against caPEM.
func writeKubeconfig(path, server string, caPEM []byte, user, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[contextName] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[contextName] = &clientcmdapi.Context{Cluster: contextName, AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = contextName
	return clientcmd.WriteToFile(*cfg, path)
}

// kubeconfigCmd implements `kindex-testenv kubeconfig`: it copies the server
// and CA from an existing kubeconfig (normally the admin one written at
// start-up) and writes a new one that authenticates with another bearer
// token: a ServiceAccount token (`kubectl create token SA`) or a static
// token given with --extra-token. RBAC tests use it to act as a restricted user.
func kubeconfigCmd(args []string) error {
	fs := flag.NewFlagSet("kindex-testenv kubeconfig", flag.ContinueOnError)
	from := fs.String("from", "", "existing kubeconfig to take the server and CA from (required)")
	token := fs.String("token", "", "bearer token of the new user (required)")
	user := fs.String("user", "token-user", "name of the user entry in the new kubeconfig")
	out := fs.String("out", "", "path of the kubeconfig to write (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *from == "" || *token == "" || *out == "" {
		fs.Usage()
		return fmt.Errorf("--from, --token and --out are required")
	}
	src, err := clientcmd.LoadFromFile(*from)
	if err != nil {
		return err
	}
	ctx, ok := src.Contexts[src.CurrentContext]
	if !ok {
		return fmt.Errorf("%s: current context %q not found", *from, src.CurrentContext)
	}
	cluster, ok := src.Clusters[ctx.Cluster]
	if !ok {
		return fmt.Errorf("%s: cluster %q not found", *from, ctx.Cluster)
	}
	return writeKubeconfig(*out, cluster.Server, cluster.CertificateAuthorityData, *user, *token)
}
