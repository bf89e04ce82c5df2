package main

// Fixtures whose content depends on launch options.

import (
	"fmt"
	"strings"
)

// configAutoscaler renders Knative's config-autoscaler with upstream's defaults, and
// allow-zero-initial-scale as asked.
func configAutoscaler(allowZeroInitial bool) string {
	return fmt.Sprintf(`---
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-autoscaler
  namespace: knative-serving
data:
  enable-scale-to-zero: "true"
  scale-to-zero-grace-period: "30s"
  scale-to-zero-pod-retention-period: "0s"
  initial-scale: "1"
  allow-zero-initial-scale: "%t"
  min-scale: "0"
  max-scale: "0"
`, allowZeroInitial)
}

// nodesYAML renders n fake GPU nodes. KWOK manages nodes with the kwok.x-k8s.io/node=fake
// annotation; status is set on create, the way a kubelet registers.
func nodesYAML(n, gpus int, product string) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Node
metadata:
  name: gpu-node-%d
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/hostname: gpu-node-%d
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node-role.kubernetes.io/gpu: ""
    nvidia.com/gpu.present: "true"
    nvidia.com/gpu.product: %s
    nvidia.com/gpu.count: "%d"
spec: {}
status:
  capacity:
    cpu: "64"
    memory: 512Gi
    pods: "110"
    nvidia.com/gpu: "%d"
  allocatable:
    cpu: "64"
    memory: 512Gi
    pods: "110"
    nvidia.com/gpu: "%d"
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: fake
`, i, i, product, gpus, gpus, gpus)
	}
	return b.String()
}
