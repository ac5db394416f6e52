package main

// cri-reset stops and removes every pod sandbox of a container runtime,
// through the same CRI API the kubelet uses. Stopping the kubelet and
// containerd leaves containers running under their shims; this is how
// `dev.sh down` takes the node's pods down cleanly (the runtime releases
// their network namespaces and addresses). The kubelet re-creates the pods
// from the API server when the node starts again.

import (
	"context"
	"fmt"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"
)

func runCRIReset(endpoint string) error {
	rs, err := remote.NewRemoteRuntimeService(endpoint, 10*time.Second, nil, nil)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", endpoint, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pods, err := rs.ListPodSandbox(ctx, &runtimeapi.PodSandboxFilter{})
	if err != nil {
		return fmt.Errorf("list pod sandboxes: %w", err)
	}
	var failed int
	for _, pod := range pods {
		if err := rs.StopPodSandbox(ctx, pod.Id); err != nil {
			fmt.Printf("stop %s/%s: %v\n", pod.Metadata.Namespace, pod.Metadata.Name, err)
		}
		if err := rs.RemovePodSandbox(ctx, pod.Id); err != nil {
			fmt.Printf("remove %s/%s: %v\n", pod.Metadata.Namespace, pod.Metadata.Name, err)
			failed++
		}
	}
	fmt.Printf("removed %d of %d pod sandboxes\n", len(pods)-failed, len(pods))
	if failed > 0 {
		return fmt.Errorf("%d pod sandboxes could not be removed", failed)
	}
	return nil
}
