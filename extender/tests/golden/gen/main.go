package main

import (
	"encoding/json"
	"fmt"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
)

func p(name string, v interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	fmt.Printf("%s\t%s\n", name, b)
}

func main() {
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ml", UID: "uid-p",
			Labels:      map[string]string{"scheduling.x-k8s.io/pod-group": "g"},
			Annotations: map[string]string{"drover.dev/min-member": "2"}},
		Spec: v1.PodSpec{SchedulerName: "default-scheduler", Containers: []v1.Container{{Name: "c", Image: "busybox",
			Resources: v1.ResourceRequirements{Requests: v1.ResourceList{
				v1.ResourceCPU: resource.MustParse("1"), v1.ResourceMemory: resource.MustParse("3Gi")}}}}},
	}
	node := v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"kubernetes.io/hostname": "n1"}},
		Status: v1.NodeStatus{Allocatable: v1.ResourceList{v1.ResourceCPU: resource.MustParse("4"), v1.ResourceMemory: resource.MustParse("4Gi"), v1.ResourcePods: resource.MustParse("110")}}}
	names := []string{"n1", "n2"}
	p("args_names", &extenderv1.ExtenderArgs{Pod: pod, NodeNames: &names})
	nl := &v1.NodeList{Items: []v1.Node{node}}
	p("args_nodes", &extenderv1.ExtenderArgs{Pod: pod, Nodes: nl})
	p("filter_names", &extenderv1.ExtenderFilterResult{NodeNames: &[]string{"n1"}, FailedNodes: extenderv1.FailedNodesMap{"n2": "Insufficient cpu"}, FailedAndUnresolvableNodes: extenderv1.FailedNodesMap{}})
	p("filter_nodes", &extenderv1.ExtenderFilterResult{Nodes: nl, FailedNodes: extenderv1.FailedNodesMap{}})
	p("filter_error", &extenderv1.ExtenderFilterResult{Error: "boom"})
	p("priorities", &extenderv1.HostPriorityList{{Host: "n1", Score: 10}, {Host: "n2", Score: 0}})
	p("bind_args", &extenderv1.ExtenderBindingArgs{PodName: "p", PodNamespace: "ml", PodUID: "uid-p", Node: "n1"})
	p("bind_result", &extenderv1.ExtenderBindingResult{})
	victim := pod.DeepCopy()
	victim.Spec.NodeName = "n1"
	p("preempt_args_meta", &extenderv1.ExtenderPreemptionArgs{Pod: pod, NodeNameToMetaVictims: map[string]*extenderv1.MetaVictims{"n1": {Pods: []*extenderv1.MetaPod{{UID: "uid-v"}}, NumPDBViolations: 1}}})
	p("preempt_args_full", &extenderv1.ExtenderPreemptionArgs{Pod: pod, NodeNameToVictims: map[string]*extenderv1.Victims{"n1": {Pods: []*v1.Pod{victim}, NumPDBViolations: 0}}})
	p("preempt_result", &extenderv1.ExtenderPreemptionResult{NodeNameToMetaVictims: map[string]*extenderv1.MetaVictims{"n1": {Pods: []*extenderv1.MetaPod{{UID: "uid-v"}}, NumPDBViolations: 1}}})
}
