package main

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// snapshot is the pod as virtual-kubelet should report it: spec as
// created, status computed from the sandbox and the containers.
func (p *podRT) snapshot() *corev1.Pod {
	p.mu.Lock()
	defer p.mu.Unlock()
	pod := p.pod.DeepCopy()
	pod.Status = p.statusLocked()
	return pod
}

func (p *podRT) statusLocked() corev1.PodStatus {
	st := corev1.PodStatus{
		HostIP:    p.rt.cfg.nodeIP,
		HostIPs:   []corev1.HostIP{{IP: p.rt.cfg.nodeIP}},
		StartTime: &p.startTime,
		QOSClass:  p.pod.Status.QOSClass, // set by the API server at creation; immutable
	}
	if p.ip != "" {
		st.PodIP = p.ip
		st.PodIPs = []corev1.PodIP{{IP: p.ip}}
	}
	allStarted, allReady, anyRunning := true, true, false
	allDone, allSucceeded := true, true
	for _, c := range p.ctrs {
		cs := corev1.ContainerStatus{
			Name:                 c.spec.Name,
			Image:                c.spec.Image,
			ImageID:              "kindex-agent://" + imageRepo(c.spec.Image),
			State:                *c.state.DeepCopy(),
			LastTerminationState: *c.last.DeepCopy(),
			Ready:                c.ready,
			RestartCount:         c.restarts,
		}
		started := c.started && c.state.Running != nil
		cs.Started = &started
		if c.everStarted {
			cs.ContainerID = fmt.Sprintf("kindex://%s-%s-%d", p.pod.UID, c.spec.Name, c.restarts)
		}
		if c.init {
			st.InitContainerStatuses = append(st.InitContainerStatuses, cs)
			continue
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
		if !c.everStarted {
			allStarted = false
		}
		if !c.ready {
			allReady = false
		}
		if c.state.Running != nil {
			anyRunning = true
		}
		if !c.terminalDone {
			allDone = false
		} else if t := c.state.Terminated; t == nil || t.ExitCode != 0 {
			allSucceeded = false
		}
	}
	switch {
	case allDone && len(p.pod.Spec.Containers) > 0 && !p.terminating:
		if allSucceeded {
			st.Phase = corev1.PodSucceeded
		} else {
			st.Phase = corev1.PodFailed
		}
	case allStarted && p.initialized:
		st.Phase = corev1.PodRunning
	default:
		st.Phase = corev1.PodPending
	}
	if p.terminating && !anyRunning && st.Phase == corev1.PodPending {
		st.Phase = corev1.PodRunning
	}
	if p.condTimes == nil {
		p.condTimes = map[corev1.PodConditionType]condTime{}
	}
	cond := func(t corev1.PodConditionType, ok bool, reason string) corev1.PodCondition {
		c := corev1.PodCondition{Type: t, Status: corev1.ConditionFalse}
		if ok {
			c.Status = corev1.ConditionTrue
		} else {
			c.Reason = reason
		}
		// The transition time changes only when the status does.
		prev, seen := p.condTimes[t]
		if !seen || prev.status != c.Status {
			prev = condTime{status: c.Status, at: metav1.Now()}
			p.condTimes[t] = prev
		}
		c.LastTransitionTime = prev.at
		return c
	}
	sandboxOK := p.ip != "" && p.sandboxErr == ""
	ready := allReady && anyRunning && p.initialized && !p.terminating
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, sandboxOK, ""),
		cond(corev1.PodInitialized, p.initialized, "ContainersNotInitialized"),
		cond(corev1.ContainersReady, ready, "ContainersNotReady"),
		cond(corev1.PodReady, ready, "ContainersNotReady"),
		cond(corev1.PodScheduled, true, ""),
	}
	if p.sandboxErr != "" {
		st.Message = p.sandboxErr
	}
	return st
}

type condTime struct {
	status corev1.ConditionStatus
	at     metav1.Time
}
