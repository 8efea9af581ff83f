// Package helm exists only so that this module has a package (for go vet and
// go list). The module's purpose is its go.mod: it pins helm.sh/helm/v3 and
// declares `tool helm.sh/helm/v3/cmd/helm`, built by e2e/scripts/tools.sh with
// `go build helm.sh/helm/v3/cmd/helm`, apart from the k8s.io/kubernetes pins
// of the parent module.
package helm
