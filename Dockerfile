# syntax=docker/dockerfile:1
# One static binary in a distroless image. It runs as non-root by default
# (the coordinator); the agent's DaemonSet sets runAsUser: 0 because it must
# read every pod's projected volume.
ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=v0.0.0-dev
ARG COMMIT=unknown
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/tokenroll/tokenroll/internal/version.Version=${VERSION} -X github.com/tokenroll/tokenroll/internal/version.Commit=${COMMIT}" \
      -o /out/tokenroll ./cmd/tokenroll

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tokenroll /usr/local/bin/tokenroll
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tokenroll"]
