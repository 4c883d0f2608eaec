package main

import (
	"flag"
	"io"
	"strings"
	"testing"
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
