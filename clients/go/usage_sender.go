// UsageSender batches usage events and streams them over the bidi IngestUsage RPC, with a bounded
// buffer (Send blocks while it is full), a bounded number of unacknowledged batches, and
// reconnect-and-resend.
//
// Why resending is safe: the server acknowledges a batch only after it is durable, and dedupes on
// transaction_id. When the stream breaks (server restart, connection reset, no ack in time), every
// batch written but not acknowledged is written again on a new stream, in order, as the same
// message: same batch_id, same events, same transaction ids. A batch that was committed but whose
// ack was lost comes back with its events counted as duplicates, so nothing is lost and nothing is
// counted twice. The contract is the one of the Python UsageBatcher and the TypeScript UsageSender.

package tariff

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tariffv1 "github.com/tariff/tariff/clients/go/gen/tariff/v1"
)

// RetryPolicy says how a UsageSender reconnects after its stream breaks.
type RetryPolicy struct {
	// AttemptsMax consecutive failed streams end the sender (an ack resets the count; a stream that
	// ends with nothing unacknowledged, with OK or broken after its acks, failed nothing) ...
	AttemptsMax int
	// ... and so does ElapsedMax since the first of them, whichever comes first. A stream whose
	// connection never came up (the server accepts TCP but does not answer, or cannot be reached),
	// and a reconnect the server never answered (the connection is up but the server sends nothing:
	// one left open by a server that has since stopped), failed from the moment it was opened, so its
	// wait counts in ElapsedMax; and each stream waits for its connection, a reconnect for the
	// server's response headers too (sent with its first ack), at most what remains of ElapsedMax
	// (the first: all of it), but at least MinConnect, not grpc-go's own connect timeout nor
	// AckTimeout. Against a server that never answers, the sender thus gives up at most ElapsedMax +
	// MinConnect after it first opened a stream in vain; a stream that came up and then fell silent
	// is noticed after SenderOptions.AckTimeout instead, and the reconnects after it follow this
	// policy. A reconnect's first ack slower than that wait ends it too (its batches are resent, as
	// after any failure).
	ElapsedMax time.Duration
	// MinConnect is the least a stream waits for its connection (and a reconnect for the server's answer) (default 1 s).
	MinConnect     time.Duration
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	Multiplier     float64
	// Jitter randomises each delay by ±Jitter (a fraction) so that many senders do not reconnect in step.
	Jitter float64
	// RetryableCodes are worth another stream; any other status fails the sender at once, but for
	// one carrying a google.rpc.RetryInfo (an overloaded server's RESOURCE_EXHAUSTED, "retry after
	// 100 ms"), which is retried no sooner than the delay it names.
	RetryableCodes []codes.Code
}

// DefaultRetryPolicy retries connection failures for up to 10 attempts or 60 s.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{
		AttemptsMax:    10,
		ElapsedMax:     60 * time.Second,
		MinConnect:     time.Second,
		InitialBackoff: 100 * time.Millisecond,
		MaxBackoff:     5 * time.Second,
		Multiplier:     2,
		Jitter:         0.2,
		RetryableCodes: []codes.Code{
			codes.Unavailable,      // connection refused or reset, server shutting down
			codes.Aborted,          //
			codes.Canceled,         // by the server or the connection (the sender's own never reaches the retry)
			codes.Internal,         // e.g. RST_STREAM when a connection dies mid-message
			codes.DeadlineExceeded, // no ack within AckTimeout
		},
	}
}

// withDefaults is the policy with its zero fields taken from defaults (RetryableCodes when nil): a
// policy setting only AttemptsMax must not give up at once (ElapsedMax 0) nor retry nothing.
func (p RetryPolicy) withDefaults(defaults RetryPolicy) RetryPolicy {
	setDefault(&p.AttemptsMax, defaults.AttemptsMax)
	setDefault(&p.ElapsedMax, defaults.ElapsedMax)
	setDefault(&p.MinConnect, defaults.MinConnect)
	setDefault(&p.InitialBackoff, defaults.InitialBackoff)
	setDefault(&p.MaxBackoff, defaults.MaxBackoff)
	if p.Multiplier == 0 {
		p.Multiplier = defaults.Multiplier
	}
	if p.Jitter == 0 {
		p.Jitter = defaults.Jitter
	}
	if p.RetryableCodes == nil {
		p.RetryableCodes = defaults.RetryableCodes
	}
	return p
}

// SenderOptions configure a UsageSender; zero fields take the defaults given.
type SenderOptions struct {
	// BatchEventsMax cuts a batch when it holds this many events (default 500; the server takes up to 10,000).
	BatchEventsMax int
	// BatchLinger is how long a partial batch waits for more events (default 20 ms).
	BatchLinger time.Duration
	// BufferEventsMax bounds the events held at once: buffered, in flight or awaiting their ack
	// (default 10,000; at least BatchEventsMax). Send blocks while the buffer is full.
	BufferEventsMax int
	// InflightBatchesMax bounds the batches written and not yet acknowledged (default 8).
	InflightBatchesMax int
	// AckTimeout: reconnect when batches are outstanding and no ack came for this long (default 60 s).
	AckTimeout time.Duration
	// Retry is the reconnect policy (nil: DefaultRetryPolicy(); its zero fields take the default's,
	// RetryableCodes when nil, so an empty non-nil slice retries only statuses with a RetryInfo).
	Retry *RetryPolicy
	// BatchIDPrefix: batch ids are "<prefix>-<n>" (default: random per sender).
	BatchIDPrefix string
	// OnAck, if set, is called once per batch, in order, when its ack arrives, from the sender's
	// receiving goroutine: keep it short, and do not call Flush or Close from it (they wait for
	// acks that only this goroutine can take).
	OnAck func(ack *tariffv1.IngestAck, batch *tariffv1.UsageBatch)
}

// SenderStats counts what a sender did.
type SenderStats struct {
	BatchesSent  int // batches written for the first time
	BatchesAcked int
	// Summed over acks: events newly accepted, identical resends, and rejections.
	EventsAccepted  int
	EventsDuplicate int
	EventsRejected  int
	Reconnects      int // streams opened after the first one
	ResentBatches   int // batch writes on a new stream because the old one broke before their ack
	BufferedEvents  int // events held now
}

type pendingBatch struct {
	msg    *tariffv1.UsageBatch
	writes int
	done   chan struct{} // closed once ack or err is set
	ack    *tariffv1.IngestAck
	err    error
}

// UsageSender is safe for concurrent use. Create one with Client.NewUsageSender; end it with Close.
type UsageSender struct {
	usage      tariffv1.UsageServiceClient
	opts       SenderOptions
	retry      RetryPolicy
	ackTimeout error

	ctx      context.Context // cancelled when the sender fails or is aborted
	cancel   context.CancelFunc
	finished chan struct{}
	wake     chan struct{} // capacity 1: something changed for the pump

	mu            sync.Mutex
	building      []*tariffv1.UsageEvent
	linger        *time.Timer
	ready         []*pendingBatch // cut, not yet written to the current stream, in order
	unacked       []*pendingBatch // written to the current stream, awaiting acks, in order
	held          int
	room          chan struct{} // closed (and replaced) whenever room is freed or the sender stops
	closing       bool
	failure       error
	batchCounter  int
	streamsOpened int
	streamsEnded  int
	lastProgress  time.Time // last write into an empty window, or last ack
	stats         SenderStats
}

// NewUsageSender starts a sender; it opens its stream when it first has something to send.
func (c *Client) NewUsageSender(opts SenderOptions) (*UsageSender, error) {
	setDefault(&opts.BatchEventsMax, 500)
	setDefault(&opts.BatchLinger, 20*time.Millisecond)
	setDefault(&opts.BufferEventsMax, 10_000)
	setDefault(&opts.InflightBatchesMax, 8)
	setDefault(&opts.AckTimeout, 60*time.Second)
	if opts.BatchEventsMax < 0 || opts.BufferEventsMax < opts.BatchEventsMax || opts.InflightBatchesMax < 0 {
		return nil, fmt.Errorf("tariff: usage sender: need 0 < BatchEventsMax (%d) <= BufferEventsMax (%d) and InflightBatchesMax (%d) > 0",
			opts.BatchEventsMax, opts.BufferEventsMax, opts.InflightBatchesMax)
	}
	retry := DefaultRetryPolicy()
	if opts.Retry != nil {
		retry = opts.Retry.withDefaults(retry)
	}
	if opts.BatchIDPrefix == "" {
		random := make([]byte, 6)
		_, _ = rand.Read(random) // crypto/rand.Read never fails (Go 1.24+)
		opts.BatchIDPrefix = "go-" + hex.EncodeToString(random)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &UsageSender{
		usage:      c.Usage,
		opts:       opts,
		retry:      retry,
		ackTimeout: status.Errorf(codes.DeadlineExceeded, "no ack within %s", opts.AckTimeout),
		ctx:        ctx,
		cancel:     cancel,
		finished:   make(chan struct{}),
		wake:       make(chan struct{}, 1),
		room:       make(chan struct{}),
	}
	go s.run()
	return s, nil
}

func setDefault[T int | time.Duration](field *T, value T) {
	if *field == 0 {
		*field = value
	}
}

// Send buffers one event, blocking while the buffer is full (or until ctx ends). Its ack comes
// later: see OnAck, Flush and Close.
func (s *UsageSender) Send(ctx context.Context, event *tariffv1.UsageEvent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.reserveLocked(ctx, 1); err != nil {
		return err
	}
	s.building = append(s.building, event)
	if len(s.building) >= s.opts.BatchEventsMax {
		s.cutLocked()
	} else if s.linger == nil {
		var timer *time.Timer
		timer = time.AfterFunc(s.opts.BatchLinger, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.linger == timer { // not already cut by a full batch, Flush or Close
				s.cutLocked()
			}
		})
		s.linger = timer
	}
	return nil
}

// SendBatch sends these events as one batch (after any partial batch already buffered) and
// returns its ack once the server has made it durable. batchID "" takes the sender's next id. If
// ctx ends first, SendBatch returns ctx's error but the batch stays queued.
func (s *UsageSender) SendBatch(ctx context.Context, events []*tariffv1.UsageEvent, batchID string) (*tariffv1.IngestAck, error) {
	if len(events) > s.opts.BufferEventsMax {
		return nil, fmt.Errorf("tariff: a batch of %d events exceeds BufferEventsMax (%d)", len(events), s.opts.BufferEventsMax)
	}
	s.mu.Lock()
	s.cutLocked()
	if err := s.reserveLocked(ctx, len(events)); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	batch := s.enqueueLocked(append([]*tariffv1.UsageEvent(nil), events...), batchID)
	s.mu.Unlock()
	select {
	case <-batch.done:
		return batch.ack, batch.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Flush sends the partial batch now and waits for the ack of everything sent so far.
func (s *UsageSender) Flush(ctx context.Context) error {
	s.mu.Lock()
	s.cutLocked()
	outstanding := append(append([]*pendingBatch(nil), s.unacked...), s.ready...)
	s.mu.Unlock()
	for _, batch := range outstanding {
		select {
		case <-batch.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return s.Err()
}

// Close flushes, waits for every ack and ends the stream. If ctx ends first it aborts the sender.
// It returns the error that stopped the sender, if any.
func (s *UsageSender) Close(ctx context.Context) (SenderStats, error) {
	s.mu.Lock()
	s.closing = true
	s.cutLocked()
	s.mu.Unlock()
	s.notify()
	select {
	case <-s.finished:
	case <-ctx.Done():
		s.fail(fmt.Errorf("tariff: usage sender: close: %w", ctx.Err()))
		<-s.finished
	}
	return s.Stats(), s.Err()
}

// Abort stops the sender at once: every unacknowledged batch and blocked Send fails with CANCELED.
// It does not wait for the sender's goroutines to end (Close does), so OnAck may call it.
func (s *UsageSender) Abort() {
	s.fail(status.Error(codes.Canceled, "tariff: usage sender aborted"))
}

// Err is the error that stopped the sender, or nil.
func (s *UsageSender) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failure
}

// Stats is a snapshot of the sender's counters.
func (s *UsageSender) Stats() SenderStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	stats := s.stats
	stats.BufferedEvents = s.held
	return stats
}

// -- buffering ----------------------------------------------------------------------------

// reserveLocked waits (releasing s.mu) until count more events fit in the buffer.
func (s *UsageSender) reserveLocked(ctx context.Context, count int) error {
	for {
		if s.failure != nil {
			return s.failure
		}
		if s.closing {
			return status.Error(codes.FailedPrecondition, "tariff: usage sender is closed")
		}
		if s.held+count <= s.opts.BufferEventsMax {
			s.held += count
			return nil
		}
		// The buffer is full: a partial batch lingering now would only delay the acks that free room.
		s.cutLocked()
		room := s.room
		s.mu.Unlock()
		select {
		case <-room:
			s.mu.Lock()
		case <-ctx.Done():
			s.mu.Lock()
			return ctx.Err()
		}
	}
}

func (s *UsageSender) freeRoomLocked() {
	close(s.room)
	s.room = make(chan struct{})
}

// cutLocked turns the events buffered so far into a batch ready to be written.
func (s *UsageSender) cutLocked() {
	if s.linger != nil {
		s.linger.Stop()
		s.linger = nil
	}
	if len(s.building) == 0 || s.failure != nil {
		return
	}
	events := s.building
	s.building = nil
	s.enqueueLocked(events, "")
}

func (s *UsageSender) enqueueLocked(events []*tariffv1.UsageEvent, batchID string) *pendingBatch {
	s.batchCounter++
	if batchID == "" {
		batchID = fmt.Sprintf("%s-%d", s.opts.BatchIDPrefix, s.batchCounter)
	}
	batch := &pendingBatch{msg: &tariffv1.UsageBatch{BatchId: batchID, Events: events}, done: make(chan struct{})}
	s.ready = append(s.ready, batch)
	s.notify()
	return batch
}

func (s *UsageSender) notify() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// fail stops the sender for good: every pending batch and blocked Send fails with err.
func (s *UsageSender) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failure != nil {
		return
	}
	s.failure = err
	if s.linger != nil {
		s.linger.Stop()
		s.linger = nil
	}
	for _, batch := range append(s.unacked, s.ready...) {
		batch.err = err
		close(batch.done)
	}
	s.unacked, s.ready, s.building, s.held = nil, nil, nil, 0
	s.freeRoomLocked()
	s.cancel()
}

// -- the stream ---------------------------------------------------------------------------

// run is the sender's goroutine: it opens a stream whenever batches wait, and another after a
// retryable failure, until the sender is closed and drained, or fails.
func (s *UsageSender) run() {
	defer close(s.finished)
	failures := 0
	var firstFailure time.Time
	for s.waitForWork() {
		opened := time.Now()
		connectWithin := s.retry.ElapsedMax
		if failures > 0 {
			connectWithin -= opened.Sub(firstFailure)
		}
		// A reconnect waits for the server's answer too: a connection to a server that fell silent on
		// the stream before (stopped) stays open, and each stream on it would wait a whole AckTimeout.
		progressed, connected, err := s.runStream(max(connectWithin, s.retry.MinConnect), failures > 0)
		s.mu.Lock()
		s.streamsEnded++
		s.mu.Unlock()
		if err == nil {
			failures = 0
			continue
		}
		s.mu.Lock()
		stopped := s.failure != nil
		// Broken after its acks with nothing unacknowledged (a connection lost while idle): nothing was lost.
		idle := progressed && len(s.unacked) == 0
		// Every unacknowledged batch goes back to the front of the queue, in order, to be written again.
		s.ready = append(s.unacked, s.ready...)
		s.unacked = nil
		s.mu.Unlock()
		if stopped {
			return
		}
		if idle {
			// No failed stream: the next failure is the first of a new run, its ElapsedMax counted from then.
			failures = 0
			continue
		}
		if progressed {
			failures = 0
		}
		failures++
		if failures == 1 {
			firstFailure = time.Now()
			if !connected {
				firstFailure = opened // a stream that never connected (or was never answered) failed when it was opened: its wait counts
			}
		}
		exhausted := failures >= s.retry.AttemptsMax || time.Since(firstFailure) >= s.retry.ElapsedMax
		if exhausted || !s.retryable(err) {
			s.fail(fmt.Errorf("tariff: usage sender: after %d failed streams: %w", failures, err))
			return
		}
		delay := s.backoff(failures)
		if serverDelay, ok := serverRetryDelay(err); ok && serverDelay > delay {
			delay = serverDelay
		}
		select {
		case <-time.After(delay):
		case <-s.ctx.Done():
			return
		}
	}
}

// waitForWork blocks until a batch waits to be written (true), or the sender is done (false).
func (s *UsageSender) waitForWork() bool {
	for {
		s.mu.Lock()
		failed, work := s.failure != nil, len(s.ready)+len(s.unacked) > 0
		drained := s.closing && len(s.building) == 0
		s.mu.Unlock()
		switch {
		case failed:
			return false
		case work:
			return true
		case drained:
			return false
		}
		select {
		case <-s.wake:
		case <-s.ctx.Done():
			return false
		}
	}
}

// runStream writes batches to one IngestUsage stream while its receiving goroutine takes the acks;
// it returns nil when the sender is drained, and the stream's error otherwise. connected says the
// stream's connection came up and, with awaitAnswer, that the server answered too (response
// headers): it waits for that at most connectWithin (UNAVAILABLE after that).
func (s *UsageSender) runStream(connectWithin time.Duration, awaitAnswer bool) (progressed, connected bool, err error) {
	ctx, cancel := context.WithCancelCause(s.ctx)
	defer cancel(nil)
	s.mu.Lock()
	if s.streamsOpened > 0 {
		s.stats.Reconnects++
	}
	s.streamsOpened++
	s.mu.Unlock()
	// Without this bound a server that accepts TCP but never answers holds the stream for
	// grpc-go's connect timeout, and a reconnect for another.
	answerBy := time.Now().Add(connectWithin)
	notConnected := status.Errorf(codes.Unavailable, "no connection to the server within %.1f s", connectWithin.Seconds())
	connectTimer := time.AfterFunc(connectWithin, func() { cancel(notConnected) })
	stream, err := s.usage.IngestUsage(ctx)
	if !connectTimer.Stop() {
		return false, false, notConnected // too late, or failed for that reason: ctx is cancelled
	}
	if err != nil {
		return false, false, err
	}
	// A connection that is up says nothing of the server: one that fell silent on an earlier stream
	// (stopped) stays open. On a reconnect the server's answer (its response headers, which the
	// Tariff server sends with its first ack) is waited for as the connection is, within what
	// remains of connectWithin.
	notAnswered := status.Errorf(codes.Unavailable, "no answer from the server within %.1f s", connectWithin.Seconds())
	var answered atomic.Bool
	if awaitAnswer {
		answerTimer := time.AfterFunc(time.Until(answerBy), func() { cancel(notAnswered) })
		defer answerTimer.Stop()
		go func() {
			if _, err := stream.Header(); err == nil { // headers, or an end without them: the server answered
				answered.Store(true)
				answerTimer.Stop()
			}
		}()
	} else {
		answered.Store(true) // the connection came up: that is enough for a first stream
	}
	var acked atomic.Bool
	received := make(chan error, 1)
	go func() { received <- s.receive(stream, &acked) }()
	go s.watchAcks(ctx, cancel)
	streamError := func(err error) error {
		if errors.Is(context.Cause(ctx), s.ackTimeout) {
			return s.ackTimeout
		}
		if errors.Is(context.Cause(ctx), notAnswered) {
			return notAnswered
		}
		if err == nil {
			// The receiving side saw the end with nothing outstanding, but a batch may have been
			// written since: the stream ended before its ack all the same.
			s.mu.Lock()
			outstanding := len(s.unacked)
			s.mu.Unlock()
			if outstanding > 0 {
				return status.Errorf(codes.Unavailable, "stream ended with %d batches unacknowledged", outstanding)
			}
		}
		return err
	}
	halfClosed := false
	for {
		batch, drained := s.nextWrite()
		switch {
		case batch != nil:
			if err := stream.Send(batch.msg); err != nil {
				// The stream is over (io.EOF); its receiving side reports why.
				return acked.Load(), answered.Load() || acked.Load(), streamError(<-received)
			}
			continue
		case drained && !halfClosed:
			// Half-close: the server acks what is outstanding, then ends the stream.
			halfClosed = true
			if err := stream.CloseSend(); err != nil {
				cancel(nil)
				<-received // no ack may settle after the caller requeues the unacknowledged batches
				return acked.Load(), answered.Load() || acked.Load(), err
			}
			continue
		}
		select {
		case <-s.wake:
		case err := <-received:
			return acked.Load(), answered.Load() || acked.Load(), streamError(err)
		}
	}
}

// nextWrite takes the next batch to write if the window has room; drained says nothing is left to write, ever.
func (s *UsageSender) nextWrite() (*pendingBatch, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failure != nil {
		return nil, false
	}
	if len(s.ready) > 0 && len(s.unacked) < s.opts.InflightBatchesMax {
		batch := s.ready[0]
		s.ready = s.ready[1:]
		s.unacked = append(s.unacked, batch)
		if len(s.unacked) == 1 {
			s.lastProgress = time.Now()
		}
		if batch.writes == 0 {
			s.stats.BatchesSent++
		} else {
			s.stats.ResentBatches++
		}
		batch.writes++
		return batch, false
	}
	return nil, s.closing && len(s.ready) == 0 && len(s.building) == 0
}

// receive takes acks off one stream until it ends: nil when it ended with nothing outstanding.
func (s *UsageSender) receive(stream tariffv1.UsageService_IngestUsageClient, acked *atomic.Bool) error {
	for {
		ack, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			s.mu.Lock()
			outstanding := len(s.unacked)
			s.mu.Unlock()
			if outstanding > 0 {
				return status.Errorf(codes.Unavailable, "stream ended with %d batches unacknowledged", outstanding)
			}
			return nil
		}
		if err != nil {
			return err
		}
		batch, err := s.settle(ack)
		if err != nil {
			s.fail(fmt.Errorf("tariff: usage sender: %w", err))
			return err
		}
		acked.Store(true)
		if s.opts.OnAck != nil {
			s.opts.OnAck(ack, batch)
		}
		s.notify()
	}
}

// settle resolves the oldest unacknowledged batch with its ack.
func (s *UsageSender) settle(ack *tariffv1.IngestAck) (*tariffv1.UsageBatch, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.unacked) == 0 || s.unacked[0].msg.GetBatchId() != ack.GetBatchId() {
		// Acks come one per batch, in order: anything else means the stream cannot be trusted.
		expected := "no ack"
		if len(s.unacked) > 0 {
			expected = "the ack of " + s.unacked[0].msg.GetBatchId()
		}
		return nil, status.Errorf(codes.Internal, "expected %s, got an ack for %q", expected, ack.GetBatchId())
	}
	batch := s.unacked[0]
	s.unacked = s.unacked[1:]
	s.lastProgress = time.Now()
	s.stats.BatchesAcked++
	s.stats.EventsAccepted += int(ack.GetAccepted())
	s.stats.EventsDuplicate += int(ack.GetDuplicates())
	s.stats.EventsRejected += len(ack.GetRejected())
	s.held -= len(batch.msg.GetEvents())
	batch.ack = ack
	close(batch.done)
	s.freeRoomLocked()
	return batch.msg, nil
}

// watchAcks ends the stream (cause: s.ackTimeout) when batches are outstanding and no ack came for AckTimeout.
func (s *UsageSender) watchAcks(ctx context.Context, cancel context.CancelCauseFunc) {
	timer := time.NewTimer(s.opts.AckTimeout)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		s.mu.Lock()
		outstanding := len(s.unacked) > 0
		wait := time.Until(s.lastProgress.Add(s.opts.AckTimeout))
		s.mu.Unlock()
		if outstanding && wait <= 0 {
			cancel(s.ackTimeout)
			return
		}
		if !outstanding || wait > s.opts.AckTimeout {
			wait = s.opts.AckTimeout
		}
		timer.Reset(wait)
	}
}

func (s *UsageSender) retryable(err error) bool {
	if _, ok := serverRetryDelay(err); ok {
		return true
	}
	code := status.Code(err)
	for _, retryable := range s.retry.RetryableCodes {
		if code == retryable {
			return true
		}
	}
	return false
}

// serverRetryDelay is the delay of the status's google.rpc.RetryInfo, when it carries one: the
// server says that waiting that long helps.
func serverRetryDelay(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return 0, false
	}
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.RetryInfo); ok {
			return info.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

func (s *UsageSender) backoff(failures int) time.Duration {
	p := s.retry
	base := math.Min(float64(p.MaxBackoff), float64(p.InitialBackoff)*math.Pow(p.Multiplier, float64(failures-1)))
	return time.Duration(math.Max(0, base*(1+(mrand.Float64()*2-1)*p.Jitter)))
}
