// fakecri serves Kubernetes' fake container runtime (k8s.io/cri-client/pkg/fake) on a Unix
// socket, so a real kubelet can run without containerd or Docker: sandboxes and containers are
// bookkeeping only, nothing is executed. Used by e2e/kubelet/run-kubelet.sh.
//
// Beyond the upstream fake it gives pulled images a size (the kubelet refuses images without
// one) and, with --record, appends what the kubelet asked for in every CreateContainer (the
// environment, mounts and devices a device plugin's Allocate put there) to a JSON-lines file.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"google.golang.org/grpc"
	kubeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/fake"
	"k8s.io/cri-client/pkg/util"
)

// recorder wraps the fake runtime to log container configs.
type recorder struct {
	*fake.RemoteRuntime
	mu   sync.Mutex
	file *os.File
}

type mount struct {
	ContainerPath string `json:"containerPath"`
	HostPath      string `json:"hostPath"`
	ReadOnly      bool   `json:"readOnly"`
}

type created struct {
	Pod       string            `json:"pod"`
	Namespace string            `json:"namespace"`
	Container string            `json:"container"`
	Envs      map[string]string `json:"envs"`
	Mounts    []mount           `json:"mounts"`
	Devices   []string          `json:"devices"`
}

func (r *recorder) CreateContainer(ctx context.Context, req *kubeapi.CreateContainerRequest) (*kubeapi.CreateContainerResponse, error) {
	if r.file != nil {
		c := created{Envs: map[string]string{}, Mounts: []mount{}, Devices: []string{}}
		if m := req.GetSandboxConfig().GetMetadata(); m != nil {
			c.Pod, c.Namespace = m.Name, m.Namespace
		}
		c.Container = req.GetConfig().GetMetadata().GetName()
		for _, e := range req.GetConfig().GetEnvs() {
			c.Envs[e.Key] = e.Value
		}
		for _, m := range req.GetConfig().GetMounts() {
			c.Mounts = append(c.Mounts, mount{m.ContainerPath, m.HostPath, m.Readonly})
		}
		for _, d := range req.GetConfig().GetDevices() {
			c.Devices = append(c.Devices, d.HostPath+":"+d.ContainerPath)
		}
		line, _ := json.Marshal(c)
		r.mu.Lock()
		_, _ = r.file.Write(append(line, '\n'))
		r.mu.Unlock()
	}
	return r.RemoteRuntime.CreateContainer(ctx, req)
}

func main() {
	endpoint := flag.String("endpoint", "unix:///run/eali-fakecri/cri.sock", "CRI endpoint to listen on")
	record := flag.String("record", "", "append each CreateContainer request's envs/mounts/devices to this JSON-lines file")
	flag.Parse()

	rt := fake.NewFakeRemoteRuntime()
	rt.ImageService.SetFakeImageSize(1 << 20)
	rt.RuntimeService.FakeStatus = &kubeapi.RuntimeStatus{
		Conditions: []*kubeapi.RuntimeCondition{
			{Type: kubeapi.RuntimeReady, Status: true},
			{Type: kubeapi.NetworkReady, Status: true},
		},
	}
	r := &recorder{RemoteRuntime: rt}
	if *record != "" {
		f, err := os.OpenFile(*record, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintf(os.Stderr, "fakecri: %v\n", err)
			os.Exit(1)
		}
		r.file = f
	}
	// Our own server rather than rt.Start, so the recording wrapper is what the kubelet calls.
	srv := grpc.NewServer()
	kubeapi.RegisterRuntimeServiceServer(srv, r)
	kubeapi.RegisterImageServiceServer(srv, r)
	l, err := util.CreateListener(*endpoint)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fakecri: listen on %s: %v\n", *endpoint, err)
		os.Exit(1)
	}
	go func() { _ = srv.Serve(l) }()
	fmt.Fprintf(os.Stderr, "fakecri: serving on %s\n", *endpoint)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	srv.Stop()
}
