// Package xdan runs quantized Mixture-of-Experts LLMs (GGUF) in-process through the xdan C library.
//
// Model, Context and Sampler own C handles: call Close when done (a finalizer frees what was
// forgotten, as a safety net, not as the plan). Calls on a closed object return an *Error that
// matches ErrClosed. Failures are *Error values carrying the library's status and message.
//
// A Model may be used from many goroutines at once; a Context and a Sampler are meant for one
// goroutine at a time (calls are serialized here rather than racing).
package xdan

/*
#include <stdlib.h>
#include <string.h>
#include "glue.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"runtime/cgo"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Token is a vocabulary id; Seq is a sequence slot in a Context.
type (
	Token = int32
	Seq   = uint32
)

// Status is the library's status code.
type Status int

const (
	StatusOK             Status = 0
	StatusInvalidArg     Status = 1
	StatusIO             Status = 2
	StatusFormat         Status = 3
	StatusUnsupported    Status = 4
	StatusOutOfMemory    Status = 5
	StatusContextFull    Status = 6
	StatusDevice         Status = 7
	StatusCancelled      Status = 8
	StatusBufferTooSmall Status = 9
	StatusBusy           Status = 10
	StatusInternal       Status = 11
)

// String gives the C name, e.g. "XDAN_E_FORMAT".
func (s Status) String() string {
	return C.GoString(C.xdan_status_name(C.xdan_status(s)))
}

// Error is a failed call: which function, the status and the library's detail message.
type Error struct {
	Op      string
	Status  Status
	Message string
	err     error // ErrClosed, fs.ErrNotExist or nil
}

func (e *Error) Error() string {
	return fmt.Sprintf("xdan: %s: %s: %s", e.Op, e.Status, e.Message)
}

// Unwrap lets errors.Is match ErrClosed, and fs.ErrNotExist for a model file that is not there.
func (e *Error) Unwrap() error { return e.err }

// ErrClosed is matched (errors.Is) by the error of any call on a closed object.
var ErrClosed = errors.New("xdan: object is closed")

func closedError(op, what string) error {
	return &Error{Op: op, Status: StatusInvalidArg, Message: what + " is closed", err: ErrClosed}
}

// call runs one C call and, on failure, reads xdan_last_error on the same OS thread: the message
// is per thread, and a goroutine may otherwise move between threads between the two calls.
func call(op string, f func() C.xdan_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	st := f()
	if st == 0 {
		return nil
	}
	return &Error{Op: op, Status: Status(st), Message: C.GoString(C.xdan_last_error())}
}

// Counts of handles freed, for the leak tests.
var freedModels, freedContexts, freedSamplers atomic.Int64

// AbiVersion is the library's XDAN_ABI_VERSION; Version its version string.
func AbiVersion() uint32 { return uint32(C.xdan_abi_version()) }
func Version() string    { return C.GoString(C.xdan_version()) }

// CudaAvailable tells whether a usable CUDA device, driver and NVRTC are present.
func CudaAvailable() bool { return bool(C.xdan_cuda_available()) }

// LogLevel of a library log line.
type LogLevel int

const (
	LogError LogLevel = 0
	LogWarn  LogLevel = 1
	LogInfo  LogLevel = 2
	LogDebug LogLevel = 3
)

var (
	logMu sync.RWMutex
	logFn func(LogLevel, string)
)

// SetLogCallback sends the library's log lines to fn; nil restores the default (stderr,
// warnings and errors). fn may be called from any thread, also from threads the library made:
// keep it short and non-blocking.
//
// The sink is a package variable rather than a cgo.Handle: a line being logged on another thread
// while the sink is replaced then finds either sink, never a deleted handle.
func SetLogCallback(fn func(level LogLevel, message string)) {
	logMu.Lock()
	logFn = fn
	logMu.Unlock()
	if fn == nil {
		C.xdan_go_enable_log(0)
	} else {
		C.xdan_go_enable_log(1)
	}
}

//export xdanGoLog
func xdanGoLog(level C.int, message *C.char) {
	logMu.RLock()
	fn := logFn
	logMu.RUnlock()
	if fn == nil {
		return
	}
	defer func() { _ = recover() }() // a panic must not unwind into C
	fn(LogLevel(level), C.GoString(message))
}

// callbackState carries a Go callback through C; a panic in it is kept and re-raised on the
// calling goroutine once the C call has returned.
type callbackState struct {
	progress func(float32) bool
	abort    func() bool
	panicked interface{}
}

func (s *callbackState) repanic() {
	if p := s.panicked; p != nil {
		s.panicked = nil
		panic(p)
	}
}

//export xdanGoProgress
func xdanGoProgress(fraction C.float, handle C.uintptr_t) (ok C.bool) {
	s := cgo.Handle(handle).Value().(*callbackState)
	if s.panicked != nil {
		return false
	}
	defer func() {
		if p := recover(); p != nil {
			s.panicked = p
			ok = false
		}
	}()
	return C.bool(s.progress(float32(fraction)))
}

//export xdanGoAbort
func xdanGoAbort(handle C.uintptr_t) (ok C.bool) {
	s := cgo.Handle(handle).Value().(*callbackState)
	if s.panicked != nil {
		return false
	}
	defer func() {
		if p := recover(); p != nil {
			s.panicked = p
			ok = false
		}
	}()
	return C.bool(s.abort())
}

// ---------------------------------------------------------------------------------------------
// Model

// Device to run on.
type Device int

const (
	DeviceAuto Device = 0
	DeviceCPU  Device = 1
	DeviceCUDA Device = 2
)

// ModelParams are the load options; start from DefaultModelParams.
type ModelParams struct {
	Device     Device
	CudaDevice int32
	VramBudget uint64 // bytes; 0 = free memory minus a margin
	Threads    int32  // 0 = physical cores
	UseMmap    bool
	VocabOnly  bool
	// Progress is called during the load with the fraction done; returning false cancels it.
	Progress func(fraction float32) bool
}

// DefaultModelParams are the library's defaults.
func DefaultModelParams() ModelParams {
	var p C.xdan_model_params
	C.xdan_model_params_init(&p)
	return ModelParams{
		Device:     Device(p.device),
		CudaDevice: int32(p.cuda_device),
		VramBudget: uint64(p.vram_budget),
		Threads:    int32(p.n_threads),
		UseMmap:    bool(p.use_mmap),
		VocabOnly:  bool(p.vocab_only),
	}
}

// ModelInfo describes a loaded model.
type ModelInfo struct {
	Arch                                                  string
	NVocab, NCtxTrain, NEmbd, NLayer, NHead, NHeadKV, NFF uint32
	NExpert, NExpertUsed                                  uint32
	NParams, FileBytes                                    uint64
	BOS, EOS                                              Token
}

// Model is a loaded GGUF model, immutable and safe for concurrent use.
type Model struct {
	mu sync.RWMutex
	p  *C.xdan_model
}

// LoadModel loads a GGUF file; params nil means DefaultModelParams. A missing file gives an
// *Error with StatusIO that also matches fs.ErrNotExist.
func LoadModel(path string, params *ModelParams) (*Model, error) {
	if params == nil {
		d := DefaultModelParams()
		params = &d
	}
	var p C.xdan_model_params
	C.xdan_model_params_init(&p)
	p.size = C.uint32_t(unsafe.Sizeof(p))
	p.device = uint32(params.Device)
	p.cuda_device = C.int32_t(params.CudaDevice)
	p.vram_budget = C.uint64_t(params.VramBudget)
	p.n_threads = C.int32_t(params.Threads)
	p.use_mmap = C.bool(params.UseMmap)
	p.vocab_only = C.bool(params.VocabOnly)
	var state *callbackState
	if params.Progress != nil {
		state = &callbackState{progress: params.Progress}
		h := cgo.NewHandle(state)
		defer h.Delete()
		C.xdan_go_set_progress(&p, C.uintptr_t(h))
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var out *C.xdan_model
	err := call("xdan_model_load", func() C.xdan_status { return C.xdan_status(C.xdan_model_load(cpath, &p, &out)) })
	if state != nil && state.panicked != nil {
		if err == nil {
			C.xdan_model_free(out)
		}
		state.repanic()
	}
	if err != nil {
		if e := err.(*Error); e.Status == StatusIO {
			if _, serr := os.Stat(path); errors.Is(serr, fs.ErrNotExist) {
				e.err = fs.ErrNotExist
			}
		}
		return nil, err
	}
	m := &Model{p: out}
	runtime.SetFinalizer(m, (*Model).Close)
	return m, nil
}

// Close frees the model. Contexts made from it stay usable (they hold their own reference).
// Closing twice is harmless.
func (m *Model) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.p != nil {
		C.xdan_model_free(m.p)
		m.p = nil
		freedModels.Add(1)
		runtime.SetFinalizer(m, nil)
	}
	return nil
}

// with runs f on the open handle under the read lock.
func (m *Model) with(op string, f func(p *C.xdan_model) error) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.p == nil {
		return closedError(op, "model")
	}
	return f(m.p)
}

// Info describes the model.
func (m *Model) Info() (ModelInfo, error) {
	var ci C.xdan_model_info
	err := m.with("xdan_model_info_get", func(p *C.xdan_model) error {
		ci.size = C.uint32_t(unsafe.Sizeof(ci))
		return call("xdan_model_info_get", func() C.xdan_status { return C.xdan_status(C.xdan_model_info_get(p, &ci)) })
	})
	if err != nil {
		return ModelInfo{}, err
	}
	return ModelInfo{
		Arch:        C.GoString(&ci.arch[0]),
		NVocab:      uint32(ci.n_vocab),
		NCtxTrain:   uint32(ci.n_ctx_train),
		NEmbd:       uint32(ci.n_embd),
		NLayer:      uint32(ci.n_layer),
		NHead:       uint32(ci.n_head),
		NHeadKV:     uint32(ci.n_head_kv),
		NFF:         uint32(ci.n_ff),
		NExpert:     uint32(ci.n_expert),
		NExpertUsed: uint32(ci.n_expert_used),
		NParams:     uint64(ci.n_params),
		FileBytes:   uint64(ci.file_bytes),
		BOS:         Token(ci.bos),
		EOS:         Token(ci.eos),
	}, nil
}

// stringOut runs a string-returning C call with the retry protocol (small buffer, then the size
// the library asked for), in C memory.
func stringOut(op string, f func(buf *C.char, cap C.size_t, n *C.size_t) C.xdan_status) (string, error) {
	capacity := C.size_t(256)
	for attempt := 0; attempt < 2; attempt++ {
		buf := (*C.char)(C.malloc(capacity))
		n := (*C.size_t)(C.malloc(C.size_t(unsafe.Sizeof(C.size_t(0)))))
		var s string
		var retry bool
		err := func() error {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			st := f(buf, capacity, n)
			if Status(st) == StatusBufferTooSmall && attempt == 0 {
				retry = true
				capacity = *n + 1
				return nil
			}
			if st != 0 {
				return &Error{Op: op, Status: Status(st), Message: C.GoString(C.xdan_last_error())}
			}
			s = C.GoStringN(buf, C.int(*n))
			return nil
		}()
		C.free(unsafe.Pointer(buf))
		C.free(unsafe.Pointer(n))
		if err != nil {
			return "", err
		}
		if !retry {
			return s, nil
		}
	}
	return "", &Error{Op: op, Status: StatusInternal, Message: "buffer size changed between calls"}
}

// Meta gives a GGUF metadata value as text (StatusInvalidArg if the key is absent).
func (m *Model) Meta(key string) (string, error) {
	var out string
	err := m.with("xdan_model_meta", func(p *C.xdan_model) error {
		ckey := C.CString(key)
		defer C.free(unsafe.Pointer(ckey))
		var err error
		out, err = stringOut("xdan_model_meta", func(buf *C.char, cap C.size_t, n *C.size_t) C.xdan_status {
			return C.xdan_status(C.xdan_model_meta(p, ckey, buf, cap, n))
		})
		return err
	})
	return out, err
}

// Tokenize flags.
const (
	TokenizeAddSpecial    uint32 = 1 // add BOS (and EOS) as the model's metadata says
	TokenizeParseSpecial  uint32 = 2 // special-token text becomes special tokens
	DetokenizeSkipSpecial uint32 = 1 // control tokens produce no text
)

// cBytes copies s, all its bytes, into C memory.
func cBytes(s string) (*C.char, C.size_t) {
	return C.CString(s), C.size_t(len(s))
}

// cTokens copies tokens into C memory (at least one element so the pointer is valid).
func cTokens(tokens []Token) *C.xdan_token {
	n := len(tokens)
	if n == 0 {
		n = 1
	}
	p := (*C.xdan_token)(C.malloc(C.size_t(n) * C.size_t(unsafe.Sizeof(C.xdan_token(0)))))
	if len(tokens) > 0 {
		C.memcpy(unsafe.Pointer(p), unsafe.Pointer(&tokens[0]), C.size_t(len(tokens))*C.size_t(unsafe.Sizeof(C.xdan_token(0))))
	}
	return p
}

// Tokenize turns text into token ids.
func (m *Model) Tokenize(text string, flags uint32) ([]Token, error) {
	var out []Token
	err := m.with("xdan_tokenize", func(p *C.xdan_model) error {
		ctext, clen := cBytes(text)
		defer C.free(unsafe.Pointer(ctext))
		capacity := C.size_t(len(text) + 4)
		for attempt := 0; attempt < 2; attempt++ {
			buf := (*C.xdan_token)(C.malloc(capacity * C.size_t(unsafe.Sizeof(C.xdan_token(0)))))
			var n C.size_t
			retry := false
			err := func() error {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				st := C.xdan_status(C.xdan_tokenize(p, ctext, clen, C.uint32_t(flags), buf, capacity, &n))
				if Status(st) == StatusBufferTooSmall && attempt == 0 {
					retry = true
					capacity = n
					return nil
				}
				if st != 0 {
					return &Error{Op: "xdan_tokenize", Status: Status(st), Message: C.GoString(C.xdan_last_error())}
				}
				out = make([]Token, int(n))
				if n > 0 {
					C.memcpy(unsafe.Pointer(&out[0]), unsafe.Pointer(buf), n*C.size_t(unsafe.Sizeof(C.xdan_token(0))))
				}
				return nil
			}()
			C.free(unsafe.Pointer(buf))
			if err != nil || !retry {
				return err
			}
		}
		return &Error{Op: "xdan_tokenize", Status: StatusInternal, Message: "token count changed between calls"}
	})
	return out, err
}

// Detokenize turns token ids into text.
func (m *Model) Detokenize(tokens []Token, flags uint32) (string, error) {
	var out string
	err := m.with("xdan_detokenize", func(p *C.xdan_model) error {
		ct := cTokens(tokens)
		defer C.free(unsafe.Pointer(ct))
		var err error
		out, err = stringOut("xdan_detokenize", func(buf *C.char, cap C.size_t, n *C.size_t) C.xdan_status {
			return C.xdan_status(C.xdan_detokenize(p, ct, C.size_t(len(tokens)), C.uint32_t(flags), buf, cap, n))
		})
		return err
	})
	return out, err
}

// TokenPiece is the text of one token.
func (m *Model) TokenPiece(t Token) (string, error) {
	var out string
	err := m.with("xdan_token_piece", func(p *C.xdan_model) error {
		var err error
		out, err = stringOut("xdan_token_piece", func(buf *C.char, cap C.size_t, n *C.size_t) C.xdan_status {
			return C.xdan_status(C.xdan_token_piece(p, C.xdan_token(t), buf, cap, n))
		})
		return err
	})
	return out, err
}

// IsEOG tells whether t ends generation (EOS, EOT...). False on a closed model.
func (m *Model) IsEOG(t Token) bool {
	eog := false
	_ = m.with("xdan_token_is_eog", func(p *C.xdan_model) error {
		eog = bool(C.xdan_token_is_eog(p, C.xdan_token(t)))
		return nil
	})
	return eog
}

// ChatMessage is one turn of a conversation.
type ChatMessage struct{ Role, Content string }

// ChatApply renders the model's chat template.
func (m *Model) ChatApply(messages []ChatMessage, addAssistantPrompt bool) (string, error) {
	var out string
	err := m.with("xdan_chat_apply", func(p *C.xdan_model) error {
		n := len(messages)
		msgs := (*[1 << 28]C.xdan_chat_message)(C.malloc(C.size_t(n+1) * C.size_t(unsafe.Sizeof(C.xdan_chat_message{}))))[: n+1 : n+1]
		defer C.free(unsafe.Pointer(&msgs[0]))
		for i, msg := range messages {
			msgs[i].role = C.CString(msg.Role)
			msgs[i].content = C.CString(msg.Content)
		}
		defer func() {
			for i := 0; i < n; i++ {
				C.free(unsafe.Pointer(msgs[i].role))
				C.free(unsafe.Pointer(msgs[i].content))
			}
		}()
		var err error
		out, err = stringOut("xdan_chat_apply", func(buf *C.char, cap C.size_t, ln *C.size_t) C.xdan_status {
			return C.xdan_status(C.xdan_chat_apply(p, &msgs[0], C.size_t(n), C.bool(addAssistantPrompt), buf, cap, ln))
		})
		return err
	})
	return out, err
}

// ---------------------------------------------------------------------------------------------
// Context

// KvType is the KV cache's storage type.
type KvType int

const (
	KvF16  KvType = 0
	KvF32  KvType = 1
	KvQ8_0 KvType = 2
)

// ContextParams are the context options; start from DefaultContextParams.
type ContextParams struct {
	NCtx      uint32 // max tokens per sequence; 0 = the model's training context
	NSeqMax   uint32 // sequence slots
	NKvTokens uint32 // KV pool capacity over all sequences; 0 = NCtx * NSeqMax
	NBatch    uint32 // max tokens per forward pass
	KvType    KvType
	Threads   int32 // 0 = the model's
	// AbortCheck is polled during Step; returning false cancels the step (StatusCancelled) and
	// leaves the sequence as it was.
	AbortCheck func() bool
}

// DefaultContextParams are the library's defaults.
func DefaultContextParams() ContextParams {
	var p C.xdan_context_params
	C.xdan_context_params_init(&p)
	return ContextParams{
		NCtx:      uint32(p.n_ctx),
		NSeqMax:   uint32(p.n_seq_max),
		NKvTokens: uint32(p.n_kv_tokens),
		NBatch:    uint32(p.n_batch),
		KvType:    KvType(p.kv_type),
		Threads:   int32(p.n_threads),
	}
}

// Context holds the KV cache of one or more sequences. One goroutine at a time.
type Context struct {
	mu    sync.Mutex
	p     *C.xdan_context
	abort *callbackState
	h     cgo.Handle
}

// NewContext makes a context on m; params nil means DefaultContextParams.
func NewContext(m *Model, params *ContextParams) (*Context, error) {
	if params == nil {
		d := DefaultContextParams()
		params = &d
	}
	var p C.xdan_context_params
	C.xdan_context_params_init(&p)
	p.size = C.uint32_t(unsafe.Sizeof(p))
	p.n_ctx = C.uint32_t(params.NCtx)
	p.n_seq_max = C.uint32_t(params.NSeqMax)
	p.n_kv_tokens = C.uint32_t(params.NKvTokens)
	p.n_batch = C.uint32_t(params.NBatch)
	p.kv_type = uint32(params.KvType)
	p.n_threads = C.int32_t(params.Threads)
	c := &Context{}
	if params.AbortCheck != nil {
		c.abort = &callbackState{abort: params.AbortCheck}
		c.h = cgo.NewHandle(c.abort)
		C.xdan_go_set_abort(&p, C.uintptr_t(c.h))
	}
	var out *C.xdan_context
	err := m.with("xdan_context_new", func(mp *C.xdan_model) error {
		return call("xdan_context_new", func() C.xdan_status { return C.xdan_status(C.xdan_context_new(mp, &p, &out)) })
	})
	if err != nil {
		if c.abort != nil {
			c.h.Delete()
		}
		return nil, err
	}
	c.p = out
	runtime.SetFinalizer(c, (*Context).Close)
	return c, nil
}

// Close frees the context; closing twice is harmless.
func (c *Context) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.p != nil {
		C.xdan_context_free(c.p)
		c.p = nil
		if c.abort != nil {
			c.h.Delete()
			c.abort = nil
		}
		freedContexts.Add(1)
		runtime.SetFinalizer(c, nil)
	}
	return nil
}

func (c *Context) with(op string, f func(p *C.xdan_context) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.p == nil {
		return closedError(op, "context")
	}
	err := f(c.p)
	if c.abort != nil {
		c.abort.repanic()
	}
	return err
}

// Step appends tokens to sequence seq and runs the model; on error the sequence is unchanged.
func (c *Context) Step(seq Seq, tokens []Token) error {
	return c.with("xdan_step", func(p *C.xdan_context) error {
		ct := cTokens(tokens)
		defer C.free(unsafe.Pointer(ct))
		return call("xdan_step", func() C.xdan_status {
			return C.xdan_status(C.xdan_step(p, C.xdan_seq(seq), ct, C.size_t(len(tokens))))
		})
	})
}

// SeqTokens are tokens for one sequence in a StepBatch.
type SeqTokens struct {
	Seq    Seq
	Tokens []Token
}

// StepBatch runs several sequences in one forward pass, all or nothing.
func (c *Context) StepBatch(items []SeqTokens) error {
	return c.with("xdan_step_batch", func(p *C.xdan_context) error {
		n := len(items)
		// The item array points at token arrays: both must be C memory (cgo's pointer rules).
		arr := (*[1 << 28]C.xdan_seq_tokens)(C.malloc(C.size_t(n+1) * C.size_t(unsafe.Sizeof(C.xdan_seq_tokens{}))))[: n+1 : n+1]
		defer C.free(unsafe.Pointer(&arr[0]))
		for i, it := range items {
			arr[i].seq = C.xdan_seq(it.Seq)
			arr[i].tokens = cTokens(it.Tokens)
			arr[i].n = C.size_t(len(it.Tokens))
		}
		defer func() {
			for i := 0; i < n; i++ {
				C.free(unsafe.Pointer(arr[i].tokens))
			}
		}()
		return call("xdan_step_batch", func() C.xdan_status { return C.xdan_status(C.xdan_step_batch(p, &arr[0], C.size_t(n))) })
	})
}

// Logits returns a copy of the last logits of seq (n_vocab values).
func (c *Context) Logits(seq Seq) ([]float32, error) {
	var out []float32
	err := c.with("xdan_logits", func(p *C.xdan_context) error {
		var ptr *C.float
		var n C.size_t
		if err := call("xdan_logits", func() C.xdan_status { return C.xdan_status(C.xdan_logits(p, C.xdan_seq(seq), &ptr, &n)) }); err != nil {
			return err
		}
		out = make([]float32, int(n))
		if n > 0 {
			C.memcpy(unsafe.Pointer(&out[0]), unsafe.Pointer(ptr), n*4)
		}
		return nil
	})
	return out, err
}

// SeqLen is the number of tokens cached for seq (0 on a closed context).
func (c *Context) SeqLen(seq Seq) uint32 {
	var n uint32
	_ = c.with("xdan_seq_len", func(p *C.xdan_context) error {
		n = uint32(C.xdan_seq_len(p, C.xdan_seq(seq)))
		return nil
	})
	return n
}

// SeqTruncate keeps the first n tokens of seq.
func (c *Context) SeqTruncate(seq Seq, n uint32) error {
	return c.with("xdan_seq_truncate", func(p *C.xdan_context) error {
		return call("xdan_seq_truncate", func() C.xdan_status { return C.xdan_status(C.xdan_seq_truncate(p, C.xdan_seq(seq), C.uint32_t(n))) })
	})
}

// SeqClear empties seq.
func (c *Context) SeqClear(seq Seq) error {
	return c.with("xdan_seq_clear", func(p *C.xdan_context) error {
		return call("xdan_seq_clear", func() C.xdan_status { return C.xdan_status(C.xdan_seq_clear(p, C.xdan_seq(seq))) })
	})
}

// SeqFork makes dst a copy of src, sharing its KV blocks (no KV memory is copied).
func (c *Context) SeqFork(src, dst Seq) error {
	return c.with("xdan_seq_fork", func(p *C.xdan_context) error {
		return call("xdan_seq_fork", func() C.xdan_status { return C.xdan_status(C.xdan_seq_fork(p, C.xdan_seq(src), C.xdan_seq(dst))) })
	})
}

// SeqSave writes seq's tokens and KV to a file; SeqLoad reads one back (same model only).
func (c *Context) SeqSave(seq Seq, path string) error {
	return c.with("xdan_seq_save", func(p *C.xdan_context) error {
		cp := C.CString(path)
		defer C.free(unsafe.Pointer(cp))
		return call("xdan_seq_save", func() C.xdan_status { return C.xdan_status(C.xdan_seq_save(p, C.xdan_seq(seq), cp)) })
	})
}

func (c *Context) SeqLoad(seq Seq, path string) error {
	return c.with("xdan_seq_load", func(p *C.xdan_context) error {
		cp := C.CString(path)
		defer C.free(unsafe.Pointer(cp))
		return call("xdan_seq_load", func() C.xdan_status { return C.xdan_status(C.xdan_seq_load(p, C.xdan_seq(seq), cp)) })
	})
}

// KvStats is the KV pool's occupancy.
type KvStats struct {
	CapacityTokens, UsedTokens, SharedTokens, Bytes uint64
}

func (c *Context) KvStats() (KvStats, error) {
	var st C.xdan_kv_stats
	st.size = C.uint32_t(unsafe.Sizeof(st))
	err := c.with("xdan_kv_stats_get", func(p *C.xdan_context) error {
		return call("xdan_kv_stats_get", func() C.xdan_status { return C.xdan_status(C.xdan_kv_stats_get(p, &st)) })
	})
	if err != nil {
		return KvStats{}, err
	}
	return KvStats{uint64(st.capacity_tokens), uint64(st.used_tokens), uint64(st.shared_tokens), uint64(st.bytes)}, nil
}

// ---------------------------------------------------------------------------------------------
// Sampler

// SamplerParams are the sampling options; start from DefaultSamplerParams (Temperature 0 = greedy).
type SamplerParams struct {
	Temperature                       float32
	TopK                              int32
	TopP, MinP                        float32
	RepeatPenalty                     float32
	RepeatLastN                       int32
	FrequencyPenalty, PresencePenalty float32
	Seed                              uint64
}

func DefaultSamplerParams() SamplerParams {
	var p C.xdan_sampler_params
	C.xdan_sampler_params_init(&p)
	return SamplerParams{
		Temperature:      float32(p.temperature),
		TopK:             int32(p.top_k),
		TopP:             float32(p.top_p),
		MinP:             float32(p.min_p),
		RepeatPenalty:    float32(p.repeat_penalty),
		RepeatLastN:      int32(p.repeat_last_n),
		FrequencyPenalty: float32(p.frequency_penalty),
		PresencePenalty:  float32(p.presence_penalty),
		Seed:             uint64(p.seed),
	}
}

// Sampler picks tokens from logits and keeps the history its penalties need. One goroutine at a time.
type Sampler struct {
	mu sync.Mutex
	p  *C.xdan_sampler
}

// NewSampler makes a sampler for m; params nil means DefaultSamplerParams.
func NewSampler(m *Model, params *SamplerParams) (*Sampler, error) {
	if params == nil {
		d := DefaultSamplerParams()
		params = &d
	}
	var p C.xdan_sampler_params
	C.xdan_sampler_params_init(&p)
	p.size = C.uint32_t(unsafe.Sizeof(p))
	p.temperature = C.float(params.Temperature)
	p.top_k = C.int32_t(params.TopK)
	p.top_p = C.float(params.TopP)
	p.min_p = C.float(params.MinP)
	p.repeat_penalty = C.float(params.RepeatPenalty)
	p.repeat_last_n = C.int32_t(params.RepeatLastN)
	p.frequency_penalty = C.float(params.FrequencyPenalty)
	p.presence_penalty = C.float(params.PresencePenalty)
	p.seed = C.uint64_t(params.Seed)
	var out *C.xdan_sampler
	err := m.with("xdan_sampler_new", func(mp *C.xdan_model) error {
		return call("xdan_sampler_new", func() C.xdan_status { return C.xdan_status(C.xdan_sampler_new(mp, &p, &out)) })
	})
	if err != nil {
		return nil, err
	}
	s := &Sampler{p: out}
	runtime.SetFinalizer(s, (*Sampler).Close)
	return s, nil
}

// Close frees the sampler; closing twice is harmless.
func (s *Sampler) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p != nil {
		C.xdan_sampler_free(s.p)
		s.p = nil
		freedSamplers.Add(1)
		runtime.SetFinalizer(s, nil)
	}
	return nil
}

// Sample picks a token from seq's last logits in ctx and records it in the history.
func (s *Sampler) Sample(ctx *Context, seq Seq) (Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p == nil {
		return 0, closedError("xdan_sample", "sampler")
	}
	var t C.xdan_token
	err := ctx.with("xdan_sample", func(cp *C.xdan_context) error {
		return call("xdan_sample", func() C.xdan_status { return C.xdan_status(C.xdan_sample(cp, C.xdan_seq(seq), s.p, &t)) })
	})
	return Token(t), err
}

// Accept records tokens in the history (e.g. the prompt) without sampling.
func (s *Sampler) Accept(tokens []Token) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p == nil {
		return closedError("xdan_sampler_accept", "sampler")
	}
	ct := cTokens(tokens)
	defer C.free(unsafe.Pointer(ct))
	return call("xdan_sampler_accept", func() C.xdan_status {
		return C.xdan_status(C.xdan_sampler_accept(s.p, ct, C.size_t(len(tokens))))
	})
}

// Reset forgets the history.
func (s *Sampler) Reset() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p == nil {
		return closedError("xdan_sampler_reset", "sampler")
	}
	C.xdan_sampler_reset(s.p)
	return nil
}
