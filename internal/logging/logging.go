// Package logging builds the process's zap logger (JSON in clusters, console
// on a terminal) and routes client-go's klog into it.
package logging

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/go-logr/zapr"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/term"
	"k8s.io/klog/v2"
)

// Options are the logging flags every subcommand shares.
type Options struct {
	// Format is auto, json or console; auto means console on a terminal and
	// JSON elsewhere (a container's log is read by machines).
	Format string
	// Level is debug, info, warn or error.
	Level string
}

// NewOptions returns the defaults.
func NewOptions() *Options { return &Options{Format: "auto", Level: "info"} }

// AddFlags registers the logging flags.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Format, "log-format", o.Format, "Log format: auto (console on a terminal, JSON otherwise), json or console.")
	fs.StringVar(&o.Level, "log-level", o.Level, "Least severe level logged: debug, info, warn or error.")
}

// Validate reports every bad logging flag.
func (o *Options) Validate() error {
	var errs []error
	switch o.Format {
	case "auto", "json", "console":
	default:
		errs = append(errs, fmt.Errorf("--log-format=%q: must be auto, json or console", o.Format))
	}
	if _, err := zapcore.ParseLevel(o.Level); err != nil {
		errs = append(errs, fmt.Errorf("--log-level=%q: must be debug, info, warn or error", o.Level))
	}
	return errors.Join(errs...)
}

// Build makes a logger writing to w and points klog at it, so client-go's
// messages (leader election, reflector errors) arrive in the same stream.
func (o *Options) Build(w io.Writer) (*zap.Logger, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	level, _ := zapcore.ParseLevel(o.Level)
	format := o.Format
	if format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "console"
		}
	}
	var enc zapcore.Encoder
	if format == "console" {
		ec := zap.NewDevelopmentEncoderConfig()
		ec.EncodeLevel = zapcore.CapitalColorLevelEncoder
		ec.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
		enc = zapcore.NewConsoleEncoder(ec)
	} else {
		ec := zap.NewProductionEncoderConfig()
		ec.TimeKey = "ts"
		ec.EncodeTime = zapcore.RFC3339NanoTimeEncoder
		enc = zapcore.NewJSONEncoder(ec)
	}
	sink := zapcore.Lock(zapcore.AddSync(w))
	logger := zap.New(zapcore.NewCore(enc, sink, zap.NewAtomicLevelAt(level)), zap.AddCaller(), zap.ErrorOutput(sink))
	RouteKlog(logger)
	return logger, nil
}

// RouteKlog sends klog's output (client-go's logging) to logger.
func RouteKlog(logger *zap.Logger) {
	klog.SetLoggerWithOptions(zapr.NewLogger(logger.WithOptions(zap.AddCallerSkip(0)).Named("client-go")), klog.ContextualLogger(true))
}
