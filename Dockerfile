# syntax=docker/dockerfile:1
# One distroless image with the three programs a cluster runs: tokenroll
# (the entrypoint, what a person runs), tokenroll-agent (the DaemonSet sets it
# as its command) and tokenroll-coordinator (the Deployment's). The sandbox's
# binary is not in it. It runs as non-root by default (the coordinator); the
# agent DaemonSet's scanner sets runAsUser: 0 because it must read every pod's
# projected volume.
ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=v0.0.0-dev
ARG COMMIT=unknown
# -tags grpcnotrace: as the Makefile's TAGS, which says why.
RUN CGO_ENABLED=0 go build -trimpath -tags grpcnotrace \
      -ldflags "-s -w -X github.com/tokenroll/tokenroll/internal/version.Version=${VERSION} -X github.com/tokenroll/tokenroll/internal/version.Commit=${COMMIT}" \
      -o /out/ ./cmd/tokenroll ./cmd/tokenroll-agent ./cmd/tokenroll-coordinator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tokenroll /out/tokenroll-agent /out/tokenroll-coordinator /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tokenroll"]
