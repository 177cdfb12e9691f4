// Command say streams speech from a supertonic-grpc server into a WAV file.
//
//	say -addr localhost:50051 -text "Hello there." -voice M1 -o hello.wav
//
// Several replicas: -addr a:50051,b:50051 (client-side balancing over the list) or
// -addr dns:///tts-headless:50051 (every address a headless Service's name resolves to),
// with -service-config deploy/grpc/service_config.json for round_robin and retries.
//
// Progress goes to stderr. On any failure it prints one line, "say: <error>", to stderr
// and exits 1, so scripts and tests can rely on the shape of the output.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	pb "github.com/supertonic-grpc/clients/go/supertonicv1"
)

// optionalUint64 lets -seed distinguish "not given" (server picks a random seed) from 0.
type optionalUint64 struct {
	value uint64
	set   bool
}

func (o *optionalUint64) String() string {
	if o == nil || !o.set {
		return ""
	}
	return strconv.FormatUint(o.value, 10)
}

func (o *optionalUint64) Set(s string) error {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return fmt.Errorf("not an unsigned integer: %q", s)
	}
	o.value, o.set = v, true
	return nil
}

type options struct {
	addr           string
	text           string
	voice          string
	lang           string
	speed          float64
	steps          int
	rate           int
	seed           optionalUint64
	serviceConfig  string
	repeat         int
	out            string
	timeout        time.Duration
	connectTimeout time.Duration
	tls            bool
	tlsCA          string
	tlsCert        string
	tlsKey         string
	apiKey         string
}

// maxReceiveBytes matches the largest reply a server may be configured to send.
const maxReceiveBytes = 64 << 20

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("say", flag.ContinueOnError)
	// Usage goes to stderr in full only for -h; parse errors are reported as one line.
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.addr, "addr", "localhost:50051",
		"server address host:port, a gRPC target (dns:///name:port), or host:port,host:port,...")
	fs.StringVar(&o.serviceConfig, "service-config", "",
		"gRPC service config JSON file (load balancing, retries), e.g. deploy/grpc/service_config.json")
	fs.IntVar(&o.repeat, "repeat", 1, "send the request this many times over one connection; keep the last")
	fs.StringVar(&o.text, "text", "", "text to speak (required)")
	fs.StringVar(&o.voice, "voice", "", "voice name, e.g. M1 or F3 (empty: server default)")
	fs.StringVar(&o.lang, "lang", "", "language code: en, ko, es, pt, fr (empty: en)")
	fs.Float64Var(&o.speed, "speed", 0, "speaking rate 0.5..2.0 (0: server default)")
	fs.IntVar(&o.steps, "steps", 0, "flow-matching steps 1..50 (0: server default)")
	fs.IntVar(&o.rate, "rate", 0, "output sample rate in Hz (0: model native, 44100)")
	fs.Var(&o.seed, "seed", "noise seed for reproducible audio (unset: random)")
	fs.StringVar(&o.out, "o", "out.wav", "output WAV file")
	fs.DurationVar(&o.timeout, "timeout", 60*time.Second, "deadline for the whole request")
	fs.DurationVar(&o.connectTimeout, "connect-timeout", 5*time.Second,
		"deadline for one connection attempt")
	fs.BoolVar(&o.tls, "tls", false, "connect with TLS (system CA roots unless -tls-ca)")
	fs.StringVar(&o.tlsCA, "tls-ca", "", "PEM file of the CA that signed the server (implies -tls)")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "PEM client certificate for mTLS (with -tls-key)")
	fs.StringVar(&o.tlsKey, "tls-key", "", "PEM client private key for mTLS")
	fs.StringVar(&o.apiKey, "api-key", os.Getenv("SUPERTONIC_API_KEY"),
		"bearer token for the server (default: $SUPERTONIC_API_KEY)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stderr)
			fs.PrintDefaults()
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if strings.TrimSpace(o.text) == "" {
		return nil, errors.New("-text is required")
	}
	if o.repeat < 1 {
		return nil, errors.New("-repeat must be at least 1")
	}
	if o.timeout <= 0 || o.connectTimeout <= 0 {
		return nil, errors.New("-timeout and -connect-timeout must be positive")
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return nil, errors.New("-tls-cert and -tls-key go together")
	}
	return o, nil
}

// transport is plaintext, or TLS (optionally with a client certificate) when asked for.
func transport(o *options) (grpc.DialOption, error) {
	if !o.tls && o.tlsCA == "" && o.tlsCert == "" {
		return grpc.WithInsecure(), nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.tlsCA != "" {
		pem, err := os.ReadFile(o.tlsCA)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificates", o.tlsCA)
		}
		cfg.RootCAs = pool
	}
	if o.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg)), nil
}

// wavWriter streams 16-bit mono PCM to a file and patches the RIFF sizes on Close, so a
// long clip never has to be held in memory.
type wavWriter struct {
	f          *os.File
	sampleRate int
	dataBytes  int64
}

const wavHeaderSize = 44

func newWavWriter(f *os.File, sampleRate int) (*wavWriter, error) {
	w := &wavWriter{f: f, sampleRate: sampleRate}
	if err := w.writeHeader(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *wavWriter) writeHeader() error {
	const channels, bitsPerSample = 1, 16
	blockAlign := channels * bitsPerSample / 8
	h := make([]byte, 0, wavHeaderSize)
	le := binary.LittleEndian
	h = append(h, "RIFF"...)
	h = le.AppendUint32(h, uint32(36+w.dataBytes))
	h = append(h, "WAVEfmt "...)
	h = le.AppendUint32(h, 16) // PCM fmt chunk size
	h = le.AppendUint16(h, 1)  // WAVE_FORMAT_PCM
	h = le.AppendUint16(h, channels)
	h = le.AppendUint32(h, uint32(w.sampleRate))
	h = le.AppendUint32(h, uint32(w.sampleRate*blockAlign))
	h = le.AppendUint16(h, uint16(blockAlign))
	h = le.AppendUint16(h, bitsPerSample)
	h = append(h, "data"...)
	h = le.AppendUint32(h, uint32(w.dataBytes))
	_, err := w.f.WriteAt(h, 0)
	return err
}

func (w *wavWriter) Write(pcm []byte) error {
	if len(pcm)%2 != 0 {
		return fmt.Errorf("LINEAR16 payload has an odd length (%d bytes)", len(pcm))
	}
	if w.dataBytes+int64(len(pcm)) > 0xFFFFFFFF-36 {
		return errors.New("audio exceeds the 4 GiB WAV limit")
	}
	if _, err := w.f.WriteAt(pcm, wavHeaderSize+w.dataBytes); err != nil {
		return err
	}
	w.dataBytes += int64(len(pcm))
	return nil
}

func (w *wavWriter) Close() error {
	return w.writeHeader()
}

type result struct {
	chunks       int // text chunks completed (their last piece received)
	nextPiece    int // the piece expected next within chunk `chunks`
	dataBytes    int64
	sampleRate   int
	firstAudio   time.Duration
	total        time.Duration
	summary      *pb.SynthesizeSummary
	receivedLast bool
}

func buildRequest(o *options) *pb.SynthesizeRequest {
	req := &pb.SynthesizeRequest{
		Text:     o.text,
		Voice:    o.voice,
		Language: o.lang,
		Speed:    float32(o.speed),
		Steps:    int32(o.steps),
		AudioConfig: &pb.AudioConfig{
			Encoding:     pb.AudioEncoding_LINEAR16,
			SampleRateHz: int32(o.rate),
		},
	}
	if o.seed.set {
		seed := o.seed.value
		req.Seed = &seed
	}
	return req
}

// synthesize streams the request into tmp (a WAV file) and returns what it received.
func synthesize(ctx context.Context, client pb.TextToSpeechClient, o *options, tmp *os.File) (*result, error) {
	start := time.Now()
	// WaitForReady(false): with no server listening the call fails as soon as the first
	// connection attempt does, instead of waiting out the whole -timeout.
	stream, err := client.Synthesize(ctx, buildRequest(o), grpc.WaitForReady(false))
	if err != nil {
		return nil, err
	}
	res := &result{}
	var wav *wavWriter
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if res.receivedLast {
			return nil, errors.New("server sent a message after the summary")
		}
		switch ev := msg.GetEvent().(type) {
		case *pb.SynthesizeResponse_Chunk:
			c := ev.Chunk
			// A chunk's audio may come as several pieces: same index, piece 0, 1, ...
			if int(c.GetIndex()) != res.chunks || int(c.GetPiece()) != res.nextPiece {
				return nil, fmt.Errorf("chunk %d piece %d arrived out of order (expected %d piece %d)",
					c.GetIndex(), c.GetPiece(), res.chunks, res.nextPiece)
			}
			if enc := c.GetEncoding(); enc != pb.AudioEncoding_LINEAR16 {
				return nil, fmt.Errorf("chunk %d has encoding %s, asked for LINEAR16", c.GetIndex(), enc)
			}
			rate := int(c.GetSampleRateHz())
			if rate <= 0 {
				return nil, fmt.Errorf("chunk %d has no sample rate", c.GetIndex())
			}
			if wav == nil {
				res.firstAudio = time.Since(start)
				res.sampleRate = rate
				if wav, err = newWavWriter(tmp, rate); err != nil {
					return nil, err
				}
			} else if rate != res.sampleRate {
				return nil, fmt.Errorf("sample rate changed from %d to %d Hz at chunk %d", res.sampleRate, rate, c.GetIndex())
			}
			if err := wav.Write(c.GetAudio()); err != nil {
				return nil, err
			}
			if c.GetLastPiece() {
				res.chunks++
				res.nextPiece = 0
			} else {
				res.nextPiece++
			}
		case *pb.SynthesizeResponse_Summary:
			res.summary = ev.Summary
			res.receivedLast = true
		default:
			return nil, errors.New("server sent an empty response message")
		}
	}
	res.total = time.Since(start)
	if res.summary == nil {
		return nil, errors.New("stream ended without a summary")
	}
	if wav == nil {
		return nil, errors.New("server sent no audio")
	}
	res.dataBytes = wav.dataBytes
	return res, wav.Close()
}

func run(args []string) error {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	if o.apiKey != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+o.apiKey)
	}
	creds, err := transport(o)
	if err != nil {
		return err
	}

	// Non-blocking dial; MinConnectTimeout bounds one connection attempt so an address
	// that drops packets fails within -connect-timeout rather than the whole -timeout.
	dialOpts := []grpc.DialOption{
		creds,
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxReceiveBytes)),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.DefaultConfig,
			MinConnectTimeout: o.connectTimeout,
		}),
	}
	if o.serviceConfig != "" {
		sc, err := os.ReadFile(o.serviceConfig)
		if err != nil {
			return err
		}
		dialOpts = append(dialOpts, grpc.WithDefaultServiceConfig(string(sc)))
	}
	target, dialOpts := resolveList(o.addr, dialOpts)
	conn, err := grpc.DialContext(ctx, target, dialOpts...)
	if err != nil {
		return fmt.Errorf("connect %s: %w", o.addr, err)
	}
	defer conn.Close()

	// Write next to the target and rename at the end, so a failed run never leaves a
	// truncated file where a previous good one was.
	dir := filepath.Dir(o.out)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(o.out)+".*.part")
	if err != nil {
		return err
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	client := pb.NewTextToSpeechClient(conn)
	// Earlier repeats go to a scratch file; only the last one is kept.
	for i := 1; i < o.repeat; i++ {
		if err := synthesizeScratch(ctx, client, o, dir); err != nil {
			return describe(err)
		}
	}
	res, err := synthesize(ctx, client, o, tmp)
	if err != nil {
		return describe(err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), o.out); err != nil {
		return err
	}
	committed = true

	s := res.summary
	audioSeconds := float64(res.dataBytes/2) / float64(res.sampleRate)
	fmt.Fprintf(os.Stderr, "time to first audio: %.3f s (server %.3f s)\n",
		res.firstAudio.Seconds(), s.GetTimeToFirstAudioSeconds())
	rtf := 0.0
	if audioSeconds > 0 {
		rtf = res.total.Seconds() / audioSeconds
	}
	fmt.Fprintf(os.Stderr, "total: %.3f s for %.3f s of audio (RTF %.3f), %d chunks, %d Hz\n",
		res.total.Seconds(), audioSeconds, rtf, res.chunks, res.sampleRate)
	fmt.Fprintf(os.Stderr, "server: queue %.3f s, compute %.3f s, voice %s, language %s, seed %d, model %s\n",
		s.GetQueueSeconds(), s.GetComputeSeconds(), s.GetVoice(), s.GetLanguage(), s.GetSeed(),
		s.GetModelState())
	fmt.Fprintf(os.Stderr, "wrote %s\n", o.out)
	return nil
}

// resolveList turns "a:1,b:2" into a target of a resolver that knows both addresses (the
// load-balancing policy of the service config then spreads calls over them); any other
// address is dialled as it is.
func resolveList(addr string, opts []grpc.DialOption) (string, []grpc.DialOption) {
	if !strings.Contains(addr, ",") {
		return addr, opts
	}
	var addrs []resolver.Address
	for _, a := range strings.Split(addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, resolver.Address{Addr: a})
		}
	}
	r := manual.NewBuilderWithScheme("say-list")
	r.InitialState(resolver.State{Addresses: addrs})
	return r.Scheme() + ":///replicas", append(opts, grpc.WithResolvers(r))
}

func synthesizeScratch(ctx context.Context, client pb.TextToSpeechClient, o *options, dir string) error {
	f, err := os.CreateTemp(dir, ".say-repeat.*.part")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	_, err = synthesize(ctx, client, o, f)
	return err
}

// describe turns a gRPC status into "Code: message" (e.g. "Unavailable: connection
// refused ..."), which reads better than the default "rpc error: code = ...".
func describe(err error) error {
	if st, ok := status.FromError(err); ok {
		return fmt.Errorf("%s: %s", st.Code(), st.Message())
	}
	return err
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		// One line, always: the error text may carry newlines from the server.
		msg := strings.Join(strings.Fields(err.Error()), " ")
		fmt.Fprintf(os.Stderr, "say: %s\n", msg)
		os.Exit(1)
	}
}
