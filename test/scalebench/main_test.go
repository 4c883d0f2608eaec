package main

import (
	"flag"
	"io"
	"strings"
	"testing"

	clientfeatures "k8s.io/client-go/features"
)

func TestOptions(t *testing.T) {
	o := defaultOptions()
	fs := flag.NewFlagSet("scalebench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.addFlags(fs)
	if err := fs.Parse([]string{"--nodes", "250,50,1", "--pods-per-node=0", "--steady=1s", "--churn=-1"}); err != nil {
		t.Fatal(err)
	}
	err := o.validate()
	if err == nil {
		t.Fatal("bad flags validated")
	}
	for _, want := range []string{"--nodes: 1", "smallest first", "--pods-per-node=0", "--steady=1s", "--churn=-1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q is not in %q", want, err)
		}
	}
	d := defaultOptions()
	if err := d.validate(); err != nil {
		t.Errorf("the defaults: %v", err)
	}
	if err := fs.Parse([]string{"--nodes", "5,x"}); err == nil {
		t.Error("--nodes=5,x parsed")
	}
}

// The default steady-state window holds every watch's renewal: in a
// shorter one, opened a minute or two after the agents started, their
// watches are not renewed at all and the agents seem to make no request.
func TestSteadyWindowSeesWatchRenewals(t *testing.T) {
	if d := defaultOptions().Steady; d < watchRenewal {
		t.Errorf("--steady defaults to %s, shorter than the %s a watch lasts", d, watchRenewal)
	}
}

// The benchmark's informers list from the watch cache: client-go's
// watch-list stream is off, every other gate as it was.
func TestNoWatchList(t *testing.T) {
	base := clientfeatures.FeatureGates()
	g := noWatchList{base}
	if !base.Enabled(clientfeatures.WatchListClient) {
		t.Skip("client-go's watch-list is off by default here: nothing to turn off")
	}
	if g.Enabled(clientfeatures.WatchListClient) {
		t.Error("the watch-list stream is still on")
	}
	if g.Enabled(clientfeatures.InformerResourceVersion) != base.Enabled(clientfeatures.InformerResourceVersion) {
		t.Error("another gate changed")
	}
}
