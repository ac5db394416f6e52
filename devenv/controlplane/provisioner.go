package main

// A volume provisioner for the one local node, like minikube's: a
// PersistentVolumeClaim of a StorageClass whose provisioner is
// `fleetward.io/hostpath` gets a directory under --dir, bound as a hostPath
// PersistentVolume; a released volume with reclaim policy Delete loses its
// directory. The in-tree hostPath provisioner would do the binding, but it
// makes root-owned 0750 directories in /tmp that the charts' non-root pods
// cannot write to. Directories here are world-writable (the pods' own
// users differ) and live in the cluster's state directory.

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const provisionerName = "fleetward.io/hostpath"

// The annotation the scheduler sets on a claim of a WaitForFirstConsumer
// class once it has placed the claim's pod.
const selectedNode = "volume.kubernetes.io/selected-node"

func runProvisioner(kubeconfig, dir string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	log.Printf("provisioning %s volumes under %s", provisionerName, dir)
	// A single node with a handful of claims: a short poll is simpler than
	// informers and converges just as well.
	for {
		if err := provisionOnce(context.Background(), cs, dir); err != nil {
			log.Printf("provisioner: %v", err)
		}
		time.Sleep(time.Second)
	}
}

func provisionOnce(ctx context.Context, cs kubernetes.Interface, dir string) error {
	classes, err := cs.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	reclaim := map[string]corev1.PersistentVolumeReclaimPolicy{}
	waits := map[string]bool{}
	for _, c := range classes.Items {
		if c.Provisioner == provisionerName {
			reclaim[c.Name] = corev1.PersistentVolumeReclaimDelete
			if c.ReclaimPolicy != nil {
				reclaim[c.Name] = *c.ReclaimPolicy
			}
			waits[c.Name] = c.VolumeBindingMode != nil && *c.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer
		}
	}
	claims, err := cs.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range claims.Items {
		pvc := &claims.Items[i]
		class := ""
		if pvc.Spec.StorageClassName != nil {
			class = *pvc.Spec.StorageClassName
		}
		policy, ours := reclaim[class]
		if !ours || pvc.Spec.VolumeName != "" || pvc.Status.Phase != corev1.ClaimPending || pvc.DeletionTimestamp != nil {
			continue
		}
		// WaitForFirstConsumer: the scheduler names the node of the claim's
		// first pod (and waits for the volume) before one is made.
		if waits[class] && pvc.Annotations[selectedNode] == "" {
			continue
		}
		if err := provision(ctx, cs, dir, pvc, class, policy); err != nil {
			log.Printf("provisioner: claim %s/%s: %v", pvc.Namespace, pvc.Name, err)
		}
	}
	volumes, err := cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, pv := range volumes.Items {
		if pv.Annotations["pv.kubernetes.io/provisioned-by"] != provisionerName ||
			pv.Status.Phase != corev1.VolumeReleased ||
			pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
			continue
		}
		path := pv.Spec.HostPath.Path
		if !strings.HasPrefix(path, filepath.Clean(dir)+"/") {
			log.Printf("provisioner: volume %s points outside %s; left alone", pv.Name, dir)
			continue
		}
		if err := os.RemoveAll(path); err != nil {
			log.Printf("provisioner: removing %s: %v", path, err)
			continue
		}
		if err := cs.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			log.Printf("provisioner: deleting volume %s: %v", pv.Name, err)
			continue
		}
		log.Printf("deleted volume %s (%s)", pv.Name, path)
	}
	return nil
}

func provision(ctx context.Context, cs kubernetes.Interface, dir string, pvc *corev1.PersistentVolumeClaim,
	class string, policy corev1.PersistentVolumeReclaimPolicy) error {
	name := "pvc-" + string(pvc.UID)
	path := filepath.Join(dir, fmt.Sprintf("%s_%s_%s", pvc.Namespace, pvc.Name, name))
	if err := os.MkdirAll(path, 0o777); err != nil {
		return err
	}
	// MkdirAll's mode is filtered by the umask.
	if err := os.Chmod(path, 0o777); err != nil {
		return err
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{"pv.kubernetes.io/provisioned-by": provisionerName},
		},
		Spec: corev1.PersistentVolumeSpec{
			StorageClassName:              class,
			PersistentVolumeReclaimPolicy: policy,
			AccessModes:                   pvc.Spec.AccessModes,
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: pvc.Spec.Resources.Requests[corev1.ResourceStorage]},
			ClaimRef: &corev1.ObjectReference{
				Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID,
			},
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: path},
			},
		},
	}
	if len(pv.Spec.AccessModes) == 0 {
		pv.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	}
	_, err := cs.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err == nil {
		log.Printf("provisioned %s for claim %s/%s at %s", name, pvc.Namespace, pvc.Name, path)
	}
	return err
}
