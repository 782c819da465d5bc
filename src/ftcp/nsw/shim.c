/*
 * ftcp NSW shim: the north-side wrap of FT-TCP (paper IV-D, IV-E), preloaded
 * into an unmodified server with LD_PRELOAD.
 *
 * Environment (both required, otherwise the shim passes everything through):
 *   FTCP_NSW_SOCK  path of the agent's Unix SOCK_SEQPACKET socket
 *   FTCP_PORT      the protected local TCP port
 * Optional:
 *   FTCP_NSW_DEBUG=1   trace protocol events on stderr
 *   FTCP_NSW_STRICT=1  abort() instead of degrading to pass-through when the
 *                      agent cannot be reached
 *   FTCP_TEST_SHIM_CHILD_DELAY_MS=N  TEST ONLY (see test_child_delay)
 *
 * A protected connection is an fd returned by accept/accept4 whose local
 * address is AF_INET/AF_INET6, SOCK_STREAM/TCP, port FTCP_PORT.  Protected
 * fds live in an fd-indexed table of `struct conn *`; every other fd pays one
 * table lookup.  dup/dup2/dup3/fcntl(F_DUPFD*) follow protected fds; closing
 * one of several duplicates is not a connection close.
 *
 * The wire format is documented in ftcp/nsw/proto.py; the structs here must
 * stay byte-identical to it (little-endian, natural alignment, no padding
 * surprises: every struct below is a multiple of 8 bytes).
 *
 * Locking: `S.lock` serialises every message to the agent (so the agent sees
 * read results in the order the shim assigned them) and each request/reply
 * pair.  The table is read lock-free; it is written under `tab_lock`.  The
 * pass-through path for unprotected fds takes no lock and is
 * async-signal-safe; the protected path is not (it takes a mutex).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

/* ------------------------------------------------------------------ */
/* Protocol (mirror of ftcp/nsw/proto.py)                              */
/* ------------------------------------------------------------------ */

#define NSW_VERSION 1
#define PAGE_MAGIC 0x3157534e50435446ULL /* "FTCPNSW1" */

enum {
    M_HELLO = 1, M_ACCEPT = 2, M_READ = 3, M_WRITEMARK = 4, M_CLOSE = 5,
    M_FORK = 6, M_HOLD = 7, M_MISMATCH = 8, M_FORKED = 9,
    M_HELLO_REPLY = 65, M_ACCEPT_REPLY = 66, M_SCRIPT = 67, M_ACK = 68,
};
enum { F_REPLAYED = 1 };
enum { K_DATA = 0, K_EOF = 1, K_EAGAIN = 2, K_ERROR = 3 };
enum { MODE_NORMAL = 0, MODE_REPLAY = 1 };
enum { HOW_SHUT_RD = 0, HOW_SHUT_WR = 1, HOW_SHUT_RDWR = 2, HOW_CLOSE = 3 };
enum { WM_DISCARD_END = 1, WM_REPLAY_DONE = 2 };
enum { MM_SHORT_BUFFER = 1, MM_EARLY_EOF = 2, MM_READ_ERROR = 3 };

struct hdr { uint16_t type, flags; uint32_t pad; };
struct m_hello { struct hdr h; uint32_t version, pid; uint64_t parent_session; };
struct m_hello_reply { struct hdr h; uint64_t session_id; uint32_t version, pad; };
struct m_accept {
    struct hdr h; uint16_t family, lport, rport, pad; uint8_t laddr[16], raddr[16];
};
struct m_accept_reply {
    struct hdr h; uint64_t conn_id, discard; uint32_t mode, n_reads;
};
struct m_script { struct hdr h; uint32_t count, pad; /* count x {u32 kind, u32 value} */ };
struct m_read {
    struct hdr h; uint64_t conn_id, seq, wtotal; uint32_t kind, value, wcrc, pad;
};
struct m_writemark { struct hdr h; uint64_t conn_id, total; uint32_t crc, reason; };
struct m_close { struct hdr h; uint64_t conn_id, wtotal; uint32_t how, wcrc; };
struct m_conn { struct hdr h; uint64_t conn_id; }; /* FORK (conn_id 0), HOLD, ACK */
struct m_mismatch { struct hdr h; uint64_t conn_id, index; uint32_t code, value; };
struct m_forked { struct hdr h; uint32_t pid, count; /* count x u64 conn_id */ };
#define FORKED_CHUNK 1024

/* The shared page the agent publishes the logged watermark in. */
struct page {
    _Atomic uint64_t logged;   /* every read with session seq <= logged is logged */
    _Atomic uint32_t futex;    /* low 32 bits of logged; futex word */
    _Atomic uint32_t waiters;  /* shims blocked in futex_wait */
    uint64_t magic;
};

_Static_assert(sizeof(struct hdr) == 8, "hdr");
_Static_assert(sizeof(struct m_hello) == 24, "hello");
_Static_assert(sizeof(struct m_hello_reply) == 24, "hello_reply");
_Static_assert(sizeof(struct m_accept) == 48, "accept");
_Static_assert(sizeof(struct m_accept_reply) == 32, "accept_reply");
_Static_assert(sizeof(struct m_script) == 16, "script");
_Static_assert(sizeof(struct m_read) == 48, "read");
_Static_assert(sizeof(struct m_writemark) == 32, "writemark");
_Static_assert(sizeof(struct m_close) == 32, "close");
_Static_assert(sizeof(struct m_conn) == 16, "conn");
_Static_assert(sizeof(struct m_mismatch) == 32, "mismatch");
_Static_assert(sizeof(struct m_forked) == 16, "forked");

/* ------------------------------------------------------------------ */
/* Real functions                                                      */
/* ------------------------------------------------------------------ */

typedef ssize_t (*read_fn)(int, void *, size_t);
typedef ssize_t (*readv_fn)(int, const struct iovec *, int);
typedef ssize_t (*recv_fn)(int, void *, size_t, int);
typedef ssize_t (*recvfrom_fn)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
typedef ssize_t (*recvmsg_fn)(int, struct msghdr *, int);
typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef ssize_t (*send_fn)(int, const void *, size_t, int);
typedef ssize_t (*sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
typedef ssize_t (*sendmsg_fn)(int, const struct msghdr *, int);
typedef ssize_t (*sendfile_fn)(int, int, off_t *, size_t);
typedef int (*accept_fn)(int, struct sockaddr *, socklen_t *);
typedef int (*accept4_fn)(int, struct sockaddr *, socklen_t *, int);
typedef int (*shutdown_fn)(int, int);
typedef int (*close_fn)(int);
typedef int (*dup_fn)(int);
typedef int (*dup2_fn)(int, int);
typedef int (*dup3_fn)(int, int, int);
typedef int (*fcntl_fn)(int, int, ...);
typedef int (*close_range_fn)(unsigned int, unsigned int, int);
typedef pid_t (*fork_fn)(void);
typedef void (*exit_fn)(int) __attribute__((noreturn));

static struct {
    read_fn read; readv_fn readv; recv_fn recv; recvfrom_fn recvfrom; recvmsg_fn recvmsg;
    write_fn write; writev_fn writev; send_fn send; sendto_fn sendto; sendmsg_fn sendmsg;
    sendfile_fn sendfile, sendfile64;
    accept_fn accept; accept4_fn accept4; shutdown_fn shutdown; close_fn close;
    dup_fn dup; dup2_fn dup2; dup3_fn dup3; fcntl_fn fcntl, fcntl64;
    close_range_fn close_range;
    fork_fn fork;
    exit_fn _exit, _Exit;
} R;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static _Atomic int init_done;
static __thread int in_init;

/* ------------------------------------------------------------------ */
/* State                                                               */
/* ------------------------------------------------------------------ */

struct conn {
    uint64_t id;
    int nrefs;            /* fds of this process that refer to it */
    uint64_t wtotal;      /* bytes the application wrote (discarded ones included) */
    uint32_t wcrc;        /* CRC-32C of those bytes */
    int replaying;
    uint32_t *script;     /* nscript x {kind, value} */
    uint32_t nscript, pos;
    uint64_t discard;     /* A: output bytes to swallow */
    uint64_t rep_wtotal;  /* wtotal of the last replayed read reported */
    unsigned mark_gen;
};

#define CHUNK_BITS 10
#define CHUNK (1u << CHUNK_BITS)
#define NCHUNKS 1024u
#define MAXFD (CHUNK * NCHUNKS)

static _Atomic(struct conn **) table[NCHUNKS];
static pthread_mutex_t tab_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int nconns; /* protected fds in this process */

static struct {
    int active;            /* env present */
    int debug, strict;
    uint16_t port;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    pthread_mutex_t lock;
    int fd;                /* agent socket, -1 when not connected */
    _Atomic int dead;      /* agent lost: degrade to pass-through */
    uint64_t session_id, parent_session;
    pid_t session_pid;     /* the process that opened the session (not a vfork child) */
    struct page *page;
    _Atomic uint64_t reported;  /* session seq of the last read reported */
} S = { .lock = PTHREAD_MUTEX_INITIALIZER, .fd = -1 };

static void dbg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void dbg(const char *fmt, ...)
{
    if (!S.debug) return;
    char buf[256];
    int n = snprintf(buf, sizeof buf, "ftcp-nsw[%d]: ", (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    if (R.write) R.write(2, buf, (size_t)n);
}

static void warn_once(const char *what)
{
    static _Atomic int warned;
    if (atomic_exchange(&warned, 1)) return;
    char buf[256];
    int n = snprintf(buf, sizeof buf,
                     "ftcp-nsw[%d]: %s; protection is OFF for this process\n",
                     (int)getpid(), what);
    if (n > 0 && R.write) R.write(2, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf);
    if (S.strict) abort();
}

/* ------------------------------------------------------------------ */
/* CRC-32C (Castagnoli); same as ftcp.core.replay.outstream_crc         */
/* ------------------------------------------------------------------ */

static uint32_t crc_tab[256];
static int crc_hw;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
        crc_tab[i] = c;
    }
#if defined(__x86_64__)
    __builtin_cpu_init();
    crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc_hw_update(uint32_t crc, const unsigned char *p, size_t n)
{
    uint64_t c = ~crc & 0xffffffffu;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

static uint32_t crc_update(uint32_t crc, const void *buf, size_t n)
{
    const unsigned char *p = buf;
#if defined(__x86_64__)
    if (crc_hw) return crc_hw_update(crc, p, n);
#endif
    uint32_t c = ~crc;
    while (n--) c = crc_tab[(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

static void crc_iov(struct conn *c, const struct iovec *iov, int cnt, size_t n)
{
    for (int i = 0; i < cnt && n; i++) {
        size_t k = iov[i].iov_len < n ? iov[i].iov_len : n;
        c->wcrc = crc_update(c->wcrc, iov[i].iov_base, k);
        n -= k;
    }
}

/* ------------------------------------------------------------------ */
/* fd table                                                            */
/* ------------------------------------------------------------------ */

static inline struct conn *lookup(int fd)
{
    if (UNLIKELY((unsigned)fd >= MAXFD)) return NULL;
    struct conn **ch = atomic_load_explicit(&table[(unsigned)fd >> CHUNK_BITS],
                                            memory_order_acquire);
    if (LIKELY(ch == NULL)) return NULL;
    return __atomic_load_n(&ch[(unsigned)fd & (CHUNK - 1)], __ATOMIC_ACQUIRE);
}

/* tab_lock held */
static int tab_set(int fd, struct conn *c)
{
    if ((unsigned)fd >= MAXFD) return -1;
    struct conn **ch = atomic_load(&table[(unsigned)fd >> CHUNK_BITS]);
    if (!ch) {
        if (!c) return 0;
        ch = calloc(CHUNK, sizeof *ch);
        if (!ch) return -1;
        atomic_store_explicit(&table[(unsigned)fd >> CHUNK_BITS], ch, memory_order_release);
    }
    struct conn *old = ch[(unsigned)fd & (CHUNK - 1)];
    if (old && !c) atomic_fetch_sub(&nconns, 1);
    if (!old && c) atomic_fetch_add(&nconns, 1);
    __atomic_store_n(&ch[(unsigned)fd & (CHUNK - 1)], c, __ATOMIC_RELEASE);
    return 0;
}

static void conn_free(struct conn *c)
{
    free(c->script);
    free(c);
}

/* ------------------------------------------------------------------ */
/* Init                                                                */
/* ------------------------------------------------------------------ */

static void atfork_prepare(void);
static void atfork_parent(void);
static void atfork_child(void);

static void do_init(void)
{
    in_init = 1;
#define RES(name) R.name = (__typeof__(R.name))dlsym(RTLD_NEXT, #name)
    RES(read); RES(readv); RES(recv); RES(recvfrom); RES(recvmsg);
    RES(write); RES(writev); RES(send); RES(sendto); RES(sendmsg);
    RES(sendfile); RES(sendfile64);
    RES(accept); RES(accept4); RES(shutdown); RES(close);
    RES(dup); RES(dup2); RES(dup3); RES(fcntl); RES(fcntl64); RES(close_range);
    RES(fork); RES(_exit); RES(_Exit);
#undef RES
    if (!R.fcntl64) R.fcntl64 = R.fcntl;
    if (!R.sendfile64) R.sendfile64 = R.sendfile;
    crc_init();
    const char *sock = getenv("FTCP_NSW_SOCK");
    const char *port = getenv("FTCP_PORT");
    const char *d = getenv("FTCP_NSW_DEBUG");
    const char *st = getenv("FTCP_NSW_STRICT");
    S.debug = d && *d && *d != '0';
    S.strict = st && *st && *st != '0';
    if (sock && *sock && port && *port && strlen(sock) < sizeof S.path) {
        long p = strtol(port, NULL, 10);
        if (p > 0 && p < 65536) {
            strcpy(S.path, sock);
            S.port = (uint16_t)p;
            S.active = 1;
            pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
            dbg("active: port %u agent %s", S.port, S.path);
        }
    }
    in_init = 0;
    atomic_store(&init_done, 1);
}

static inline int ensure_init(void)
{
    if (LIKELY(atomic_load_explicit(&init_done, memory_order_acquire))) return 1;
    if (in_init) return 0; /* dlsym re-entered us: caller uses a raw syscall */
    pthread_once(&init_once, do_init);
    return 1;
}

__attribute__((constructor)) static void shim_ctor(void) { ensure_init(); }

/* ------------------------------------------------------------------ */
/* Agent session                                                       */
/* ------------------------------------------------------------------ */

static void session_lost(const char *why)
{
    if (!atomic_exchange(&S.dead, 1)) {
        char msg[160];
        snprintf(msg, sizeof msg, "agent connection lost (%s: %s)", why, strerror(errno));
        warn_once(msg);
    }
}

/* S.lock held. */
static int raw_send(const void *buf, size_t len, int pass_fd)
{
    struct iovec iov = { (void *)buf, len };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    union { char b[CMSG_SPACE(sizeof(int))]; struct cmsghdr a; } cbuf;
    if (pass_fd >= 0) {
        memset(&cbuf, 0, sizeof cbuf);
        mh.msg_control = cbuf.b;
        mh.msg_controllen = sizeof cbuf.b;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
    }
    for (;;) {
        ssize_t r = R.sendmsg(S.fd, &mh, MSG_NOSIGNAL);
        if (r == (ssize_t)len) return 0;
        if (r < 0 && errno == EINTR) continue;
        return -1;
    }
}

/* S.lock held. Receives one message; a passed fd (if any) goes to *fd_out. */
static ssize_t raw_recv(void *buf, size_t len, int *fd_out)
{
    struct iovec iov = { buf, len };
    union { char b[CMSG_SPACE(sizeof(int))]; struct cmsghdr a; } cbuf;
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = cbuf.b, .msg_controllen = sizeof cbuf.b };
    if (fd_out) *fd_out = -1;
    for (;;) {
        ssize_t r = R.recvmsg(S.fd, &mh, MSG_CMSG_CLOEXEC);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            if (r == 0) errno = ECONNRESET;
            return -1;
        }
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
                int f;
                memcpy(&f, CMSG_DATA(cm), sizeof f);
                if (fd_out && *fd_out < 0) *fd_out = f;
                else R.close(f);
            }
        }
        return r;
    }
}

/* S.lock held.  Connects and says HELLO if not yet done.  0 on success. */
static int session_ensure(void)
{
    if (LIKELY(S.fd >= 0)) return 0;
    if (atomic_load(&S.dead)) return -1;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) { session_lost("socket"); return -1; }
    /* Keep clear of the low fds applications like to dup2 onto. */
    int hi = R.fcntl(fd, F_DUPFD_CLOEXEC, 900);
    if (hi >= 0) { R.close(fd); fd = hi; }
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    strcpy(sa.sun_path, S.path);
    int r;
    do r = connect(fd, (struct sockaddr *)&sa, sizeof sa); while (r < 0 && errno == EINTR);
    if (r < 0) { R.close(fd); session_lost("connect"); return -1; }
    S.fd = fd;
    S.session_pid = getpid();
    struct m_hello h = { .h = { M_HELLO, 0, 0 }, .version = NSW_VERSION,
                         .pid = (uint32_t)getpid(), .parent_session = S.parent_session };
    struct m_hello_reply rep;
    int memfd = -1;
    if (raw_send(&h, sizeof h, -1) < 0 || raw_recv(&rep, sizeof rep, &memfd) != sizeof rep
        || rep.h.type != M_HELLO_REPLY || memfd < 0) {
        if (memfd >= 0) R.close(memfd);
        R.close(S.fd);
        S.fd = -1;
        session_lost("hello");
        return -1;
    }
    void *pg = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    R.close(memfd);
    if (pg == MAP_FAILED || ((struct page *)pg)->magic != PAGE_MAGIC) {
        R.close(S.fd);
        S.fd = -1;
        session_lost("shared page");
        return -1;
    }
    S.page = pg;
    S.session_id = rep.session_id;
    atomic_store(&S.reported, 0);
    dbg("session %llu", (unsigned long long)S.session_id);
    return 0;
}

/* Fire-and-forget message.  Takes S.lock. */
static void send_async(const void *msg, size_t len)
{
    pthread_mutex_lock(&S.lock);
    if (session_ensure() == 0 && raw_send(msg, len, -1) < 0) session_lost("send");
    pthread_mutex_unlock(&S.lock);
}

/* ------------------------------------------------------------------ */
/* Output commit: wait until every read this process reported is logged */
/* ------------------------------------------------------------------ */

static void commit_wait_slow(uint64_t need)
{
    struct page *pg = S.page;
    for (int i = 0; i < 64; i++) { /* brief: a 2-CPU host needs the CPU for the agent */
        if (atomic_load_explicit(&pg->logged, memory_order_acquire) >= need) return;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    atomic_fetch_add(&pg->waiters, 1);
    int rounds = 0;
    while (atomic_load_explicit(&pg->logged, memory_order_acquire) < need
           && !atomic_load(&S.dead)) {
        uint32_t f = atomic_load(&pg->futex);
        if (atomic_load_explicit(&pg->logged, memory_order_acquire) >= need) break;
        struct timespec ts = { 0, 5 * 1000 * 1000 }; /* safety net for a lost wake */
        syscall(SYS_futex, &pg->futex, FUTEX_WAIT, f, &ts, NULL, 0);
        if (++rounds % 20 == 0 && S.fd >= 0) { /* every ~100 ms: is the agent alive? */
            struct pollfd p = { S.fd, 0, 0 };
            if (poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR))) {
                errno = ECONNRESET;
                session_lost("agent hung up while a write waited");
            }
        }
    }
    atomic_fetch_sub(&pg->waiters, 1);
}

static inline void commit_wait(void)
{
    uint64_t need = atomic_load_explicit(&S.reported, memory_order_acquire);
    if (LIKELY(need == 0)) return;
    struct page *pg = S.page;
    if (UNLIKELY(!pg)) return;
    if (LIKELY(atomic_load_explicit(&pg->logged, memory_order_acquire) >= need)) return;
    commit_wait_slow(need);
}

/* ------------------------------------------------------------------ */
/* Reports                                                             */
/* ------------------------------------------------------------------ */

static void report_read(struct conn *c, uint32_t kind, uint32_t value, int replayed,
                        uint64_t index)
{
    int saved = errno;
    struct m_read m = { .h = { M_READ, replayed ? F_REPLAYED : 0, 0 }, .conn_id = c->id,
                        .wtotal = c->wtotal, .kind = kind, .value = value, .wcrc = c->wcrc };
    pthread_mutex_lock(&S.lock);
    if (session_ensure() == 0) {
        if (replayed) {
            m.seq = index;
        } else {
            m.seq = atomic_load(&S.reported) + 1;
        }
        if (raw_send(&m, sizeof m, -1) < 0) session_lost("send");
        else if (!replayed) atomic_store_explicit(&S.reported, m.seq, memory_order_release);
    }
    pthread_mutex_unlock(&S.lock);
    errno = saved;
}

static void report_writemark(struct conn *c, uint32_t reason)
{
    struct m_writemark m = { .h = { M_WRITEMARK, 0, 0 }, .conn_id = c->id,
                             .total = c->wtotal, .crc = c->wcrc, .reason = reason };
    send_async(&m, sizeof m);
}

static void report_mismatch(struct conn *c, uint64_t index, uint32_t code, uint32_t value)
{
    struct m_mismatch m = { .h = { M_MISMATCH, 0, 0 }, .conn_id = c->id, .index = index,
                            .code = code, .value = value };
    dbg("replay mismatch conn %llu read %llu code %u value %u",
        (unsigned long long)c->id, (unsigned long long)index, code, value);
    send_async(&m, sizeof m);
}

/* Synchronous: returns after the agent acked (or the agent is gone).  A FIN is
 * output too: like a write it waits until earlier reads are logged. */
static void report_close(struct conn *c, uint32_t how)
{
    int saved = errno;
    commit_wait();
    struct m_close m = { .h = { M_CLOSE, 0, 0 }, .conn_id = c->id, .wtotal = c->wtotal,
                         .how = how, .wcrc = c->wcrc };
    pthread_mutex_lock(&S.lock);
    if (session_ensure() == 0) {
        struct m_conn ack;
        if (raw_send(&m, sizeof m, -1) < 0) {
            session_lost("send close");
        } else {
            for (;;) {
                ssize_t r = raw_recv(&ack, sizeof ack, NULL);
                if (r < 0) { session_lost("close ack"); break; }
                if (r == sizeof ack && ack.h.type == M_ACK && ack.conn_id == c->id) break;
            }
        }
    }
    pthread_mutex_unlock(&S.lock);
    dbg("close conn %llu how %u acked", (unsigned long long)c->id, how);
    errno = saved;
}

/* ------------------------------------------------------------------ */
/* Replay bookkeeping                                                  */
/* ------------------------------------------------------------------ */

static void replay_check_done(struct conn *c)
{
    if (c->replaying && c->pos >= c->nscript && c->wtotal >= c->discard) {
        c->replaying = 0;
        free(c->script);
        c->script = NULL;
        dbg("conn %llu replay done (wrote %llu)", (unsigned long long)c->id,
            (unsigned long long)c->wtotal);
        report_writemark(c, WM_REPLAY_DONE);
    }
}

/* ------------------------------------------------------------------ */
/* Accept                                                              */
/* ------------------------------------------------------------------ */

static void fill_addr(const struct sockaddr_storage *ss, uint8_t out[16], uint16_t *port)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const void *)ss;
        memcpy(out, &s->sin_addr, 4);
        *port = ntohs(s->sin_port);
    } else {
        const struct sockaddr_in6 *s = (const void *)ss;
        memcpy(out, &s->sin6_addr, 16);
        *port = ntohs(s->sin6_port);
    }
}

static void on_accepted(int fd)
{
    struct sockaddr_storage la, ra;
    socklen_t ll = sizeof la, rl = sizeof ra;
    int saved = errno;
    if (getsockname(fd, (struct sockaddr *)&la, &ll) < 0) goto out;
    if (la.ss_family != AF_INET && la.ss_family != AF_INET6) goto out;
    uint16_t lport = ntohs(((struct sockaddr_in *)&la)->sin_port); /* same offset in v6 */
    if (lport != S.port) goto out;
    int type = 0, proto = 0;
    socklen_t tl = sizeof type, pl = sizeof proto;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_STREAM) goto out;
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &pl) == 0 && proto != IPPROTO_TCP)
        goto out;
    if (getpeername(fd, (struct sockaddr *)&ra, &rl) < 0) goto out;

    struct m_accept m = { .h = { M_ACCEPT, 0, 0 }, .family = la.ss_family };
    fill_addr(&la, m.laddr, &m.lport);
    fill_addr(&ra, m.raddr, &m.rport);

    struct conn *c = calloc(1, sizeof *c);
    if (!c) goto out;
    c->nrefs = 1;
    pthread_mutex_lock(&S.lock);
    struct m_accept_reply rep;
    if (session_ensure() < 0) goto fail;
    if (raw_send(&m, sizeof m, fd) < 0) { session_lost("send accept"); goto fail; }
    if (raw_recv(&rep, sizeof rep, NULL) != sizeof rep || rep.h.type != M_ACCEPT_REPLY) {
        session_lost("accept reply");
        goto fail;
    }
    c->id = rep.conn_id;
    if (rep.mode == MODE_REPLAY) {
        c->replaying = 1;
        c->rep_wtotal = UINT64_MAX;
        c->discard = rep.discard;
        c->nscript = rep.n_reads;
        if (rep.n_reads) {
            c->script = malloc((size_t)rep.n_reads * 8);
            if (!c->script) abort(); /* cannot replay; better to die and be recovered */
        }
        uint32_t got = 0;
        static char buf[16 + 8 * 8192];
        while (got < rep.n_reads) {
            ssize_t r = raw_recv(buf, sizeof buf, NULL);
            struct m_script *sm = (struct m_script *)buf;
            if (r < (ssize_t)sizeof *sm || sm->h.type != M_SCRIPT
                || (size_t)r != sizeof *sm + (size_t)sm->count * 8
                || got + sm->count > rep.n_reads) {
                session_lost("replay script");
                abort(); /* a half-known script cannot be replayed faithfully */
            }
            memcpy(c->script + 2 * (size_t)got, buf + sizeof *sm, (size_t)sm->count * 8);
            got += sm->count;
        }
    }
    pthread_mutex_unlock(&S.lock);
    pthread_mutex_lock(&tab_lock);
    tab_set(fd, c);
    pthread_mutex_unlock(&tab_lock);
    dbg("accept fd %d conn %llu mode %u reads %u discard %llu", fd,
        (unsigned long long)c->id, rep.mode, rep.n_reads, (unsigned long long)rep.discard);
    replay_check_done(c);
    errno = saved;
    return;
fail:
    pthread_mutex_unlock(&S.lock);
    free(c);
out:
    errno = saved;
}

EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    if (UNLIKELY(!ensure_init())) return (int)syscall(SYS_accept4, fd, addr, len, flags);
    int r = R.accept4(fd, addr, len, flags);
    if (S.active && r >= 0 && !atomic_load(&S.dead)) on_accepted(r);
    return r;
}

EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    if (UNLIKELY(!ensure_init())) return (int)syscall(SYS_accept, fd, addr, len);
    int r = R.accept(fd, addr, len);
    if (S.active && r >= 0 && !atomic_load(&S.dead)) on_accepted(r);
    return r;
}

/* ------------------------------------------------------------------ */
/* Reads                                                               */
/* ------------------------------------------------------------------ */

static size_t iov_total(const struct iovec *iov, int cnt)
{
    size_t n = 0;
    for (int i = 0; i < cnt; i++) n += iov[i].iov_len;
    return n;
}

/* Sub-window [off, off+len) of an iovec array into dst (at most max entries). */
static int iov_window(const struct iovec *src, int cnt, size_t off, size_t len,
                      struct iovec *dst, int max)
{
    int k = 0;
    for (int i = 0; i < cnt && len && k < max; i++) {
        size_t l = src[i].iov_len;
        if (off >= l) { off -= l; continue; }
        size_t take = l - off < len ? l - off : len;
        dst[k].iov_base = (char *)src[i].iov_base + off;
        dst[k].iov_len = take;
        k++;
        len -= take;
        off = 0;
    }
    return k;
}

/* Report a live read-family result (r, errno) on c. */
static inline void after_read(struct conn *c, ssize_t r, size_t asked)
{
    if (r > 0) report_read(c, K_DATA, (uint32_t)r, 0, 0);
    else if (r == 0) { if (asked) report_read(c, K_EOF, 0, 0, 0); }
    else if (errno == EAGAIN || errno == EWOULDBLOCK) report_read(c, K_EAGAIN, 0, 0, 0);
    else if (errno != EINTR) report_read(c, K_ERROR, (uint32_t)errno, 0, 0);
}

/*
 * Serve one read from the replay script.  Returns 1 and sets *out when the
 * read was served, 0 when the script is exhausted (do a live read).
 * MSG_PEEK reads look at the next entry without consuming it.
 */
static int replay_read(struct conn *c, int fd, struct msghdr *mh, int flags, ssize_t *out)
{
    if (!c->replaying || c->pos >= c->nscript) return 0;
    uint64_t index = c->pos;
    uint32_t kind = c->script[2 * index], value = c->script[2 * index + 1];
    int peek = flags & MSG_PEEK;
    size_t cap = iov_total(mh->msg_iov, (int)mh->msg_iovlen);
    if (!peek) c->pos++;
    switch (kind) {
    case K_EAGAIN:
        errno = EAGAIN;
        *out = -1;
        break;
    case K_EOF:
        *out = 0;
        break;
    case K_ERROR:
        errno = (int)value;
        *out = -1;
        break;
    default: { /* K_DATA: exactly `value` bytes, waiting for them as needed */
        size_t want = value;
        if (cap < want) {
            report_mismatch(c, index, MM_SHORT_BUFFER, (uint32_t)cap);
            want = cap;
        }
        if (peek) {
            for (;;) {
                int avail = 0;
                if (ioctl(fd, FIONREAD, &avail) == 0 && (size_t)avail >= want) break;
                struct pollfd p = { fd, POLLIN | POLLRDHUP, 0 };
                poll(&p, 1, 10);
                if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) break;
            }
            *out = R.recvmsg(fd, mh, flags);
            break;
        }
        size_t got = 0;
        struct iovec win[64];
        struct msghdr m = *mh;
        while (got < want) {
            m.msg_iov = win;
            m.msg_iovlen = (size_t)iov_window(mh->msg_iov, (int)mh->msg_iovlen, got,
                                              want - got, win, 64);
            ssize_t r = R.recvmsg(fd, &m, (flags & ~MSG_WAITALL) | MSG_DONTWAIT);
            if (r > 0) {
                if (!got) { /* address and ancillary data come with the first chunk */
                    mh->msg_namelen = m.msg_namelen;
                    mh->msg_controllen = m.msg_controllen;
                    mh->msg_flags = m.msg_flags;
                    m.msg_name = NULL; m.msg_namelen = 0;
                    m.msg_control = NULL; m.msg_controllen = 0;
                }
                got += (size_t)r;
                continue;
            }
            if (r == 0) { report_mismatch(c, index, MM_EARLY_EOF, (uint32_t)got); break; }
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                struct pollfd p = { fd, POLLIN, 0 };
                poll(&p, 1, -1);
                continue;
            }
            report_mismatch(c, index, MM_READ_ERROR, (uint32_t)errno);
            if (!got) { *out = -1; goto done; }
            break;
        }
        *out = (ssize_t)got;
        break;
    }
    }
done:
    if (!peek) {
        int saved = errno;
        /* What the agent checks is the output so far (wtotal, wcrc) against the same
         * prefix before the crash: a read after which the output did not move adds
         * nothing to check, and a message per read was most of a small-read replay. */
        if (c->wtotal != c->rep_wtotal) {
            c->rep_wtotal = c->wtotal;
            report_read(c, kind, value, 1, index);
        }
        replay_check_done(c);
        errno = saved;
    }
    return 1;
}

/* Shared body of the read family on a protected fd, expressed as recvmsg. */
static ssize_t prot_recvmsg(struct conn *c, int fd, struct msghdr *mh, int flags)
{
    ssize_t r;
    if (UNLIKELY(c->replaying) && replay_read(c, fd, mh, flags, &r)) return r;
    r = R.recvmsg(fd, mh, flags);
    if (!(flags & MSG_PEEK)) after_read(c, r, iov_total(mh->msg_iov, (int)mh->msg_iovlen));
    return r;
}

EXPORT ssize_t read(int fd, void *buf, size_t n)
{
    if (UNLIKELY(!ensure_init())) return syscall(SYS_read, fd, buf, n);
    struct conn *c = lookup(fd);
    if (LIKELY(!c)) return R.read(fd, buf, n);
    if (UNLIKELY(c->replaying)) {
        struct iovec iov = { buf, n };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
        ssize_t r;
        if (replay_read(c, fd, &mh, 0, &r)) return r;
    }
    ssize_t r = R.read(fd, buf, n);
    after_read(c, r, n);
    return r;
}

EXPORT ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen)
{
    if (n > buflen) {
        static ssize_t (*chk)(int, void *, size_t, size_t);
        if (!chk) chk = (__typeof__(chk))dlsym(RTLD_NEXT, "__read_chk");
        if (chk) return chk(fd, buf, n, buflen); /* aborts */
        abort();
    }
    return read(fd, buf, n);
}

EXPORT ssize_t readv(int fd, const struct iovec *iov, int cnt)
{
    if (UNLIKELY(!ensure_init())) return syscall(SYS_readv, fd, iov, cnt);
    struct conn *c = lookup(fd);
    if (LIKELY(!c)) return R.readv(fd, iov, cnt);
    if (UNLIKELY(c->replaying)) {
        struct msghdr mh = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)cnt };
        ssize_t r;
        if (replay_read(c, fd, &mh, 0, &r)) return r;
    }
    ssize_t r = R.readv(fd, iov, cnt);
    after_read(c, r, iov_total(iov, cnt));
    return r;
}

EXPORT ssize_t recv(int fd, void *buf, size_t n, int flags)
{
    if (UNLIKELY(!ensure_init())) return syscall(SYS_recvfrom, fd, buf, n, flags, NULL, NULL);
    struct conn *c = lookup(fd);
    if (LIKELY(!c)) return R.recv(fd, buf, n, flags);
    if (UNLIKELY(c->replaying)) {
        struct iovec iov = { buf, n };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
        ssize_t r;
        if (replay_read(c, fd, &mh, flags, &r)) return r;
    }
    ssize_t r = R.recv(fd, buf, n, flags);
    if (!(flags & MSG_PEEK)) after_read(c, r, n);
    return r;
}

EXPORT ssize_t __recv_chk(int fd, void *buf, size_t n, size_t buflen, int flags)
{
    if (n > buflen) {
        static ssize_t (*chk)(int, void *, size_t, size_t, int);
        if (!chk) chk = (__typeof__(chk))dlsym(RTLD_NEXT, "__recv_chk");
        if (chk) return chk(fd, buf, n, buflen, flags);
        abort();
    }
    return recv(fd, buf, n, flags);
}

EXPORT ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *addr,
                        socklen_t *alen)
{
    if (UNLIKELY(!ensure_init())) return syscall(SYS_recvfrom, fd, buf, n, flags, addr, alen);
    struct conn *c = lookup(fd);
    if (LIKELY(!c)) return R.recvfrom(fd, buf, n, flags, addr, alen);
    if (UNLIKELY(c->replaying)) {
        struct iovec iov = { buf, n };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_name = addr,
                             .msg_namelen = alen ? *alen : 0 };
        if (!addr) mh.msg_namelen = 0;
        ssize_t r;
        if (replay_read(c, fd, &mh, flags, &r)) {
            if (alen && addr && r >= 0) *alen = mh.msg_namelen;
            return r;
        }
    }
    ssize_t r = R.recvfrom(fd, buf, n, flags, addr, alen);
    if (!(flags & MSG_PEEK)) after_read(c, r, n);
    return r;
}

EXPORT ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags,
                              struct sockaddr *addr, socklen_t *alen)
{
    if (n > buflen) {
        static ssize_t (*chk)(int, void *, size_t, size_t, int, struct sockaddr *,
                              socklen_t *);
        if (!chk) chk = (__typeof__(chk))dlsym(RTLD_NEXT, "__recvfrom_chk");
        if (chk) return chk(fd, buf, n, buflen, flags, addr, alen);
        abort();
    }
    return recvfrom(fd, buf, n, flags, addr, alen);
}

EXPORT ssize_t recvmsg(int fd, struct msghdr *mh, int flags)
{
    if (UNLIKELY(!ensure_init())) return syscall(SYS_recvmsg, fd, mh, flags);
    struct conn *c = lookup(fd);
    if (LIKELY(!c)) return R.recvmsg(fd, mh, flags);
    return prot_recvmsg(c, fd, mh, flags);
}

/* ------------------------------------------------------------------ */
/* Writes                                                              */
/* ------------------------------------------------------------------ */

/*
 * Replay-mode output: swallow what falls below `discard` (reporting success),
 * pass the rest through with sendmsg.  Returns -2 if nothing is left to
 * discard (the caller does a plain pass-through write).
 */
static ssize_t replay_write(struct conn *c, int fd, const struct iovec *iov, int cnt,
                            int flags)
{
    if (c->wtotal >= c->discard) return -2;
    size_t len = iov_total(iov, cnt);
    uint64_t left = c->discard - c->wtotal;
    if (len <= left) {
        crc_iov(c, iov, cnt, len);
        c->wtotal += len;
        if (c->wtotal == c->discard) report_writemark(c, WM_DISCARD_END);
        replay_check_done(c);
        return (ssize_t)len;
    }
    crc_iov(c, iov, cnt, (size_t)left);
    c->wtotal += left;
    report_writemark(c, WM_DISCARD_END);
    struct iovec win[64];
    struct msghdr mh = { .msg_iov = win };
    mh.msg_iovlen = (size_t)iov_window(iov, cnt, (size_t)left, len - (size_t)left, win, 64);
    ssize_t r = R.sendmsg(fd, &mh, flags | MSG_NOSIGNAL);
    if (r > 0) {
        crc_iov(c, win, (int)mh.msg_iovlen, (size_t)r);
        c->wtotal += (uint64_t)r;
    }
    replay_check_done(c);
    return (ssize_t)left + (r > 0 ? r : 0);
}

static inline void after_write(struct conn *c, const struct iovec *iov, int cnt, ssize_t r)
{
    if (r > 0) {
        crc_iov(c, iov, cnt, (size_t)r);
        c->wtotal += (uint64_t)r;
    }
}

EXPORT ssize_t write(int fd, const void *buf, size_t n)
{
    if (UNLIKELY(!ensure_init())) return syscall(SYS_write, fd, buf, n);
    struct conn *c = lookup(fd);
    if (LIKELY(!c)) return R.write(fd, buf, n);
    commit_wait();
    struct iovec iov = { (void *)buf, n };
    if (UNLIKELY(c->replaying)) {
        ssize_t r = replay_write(c, fd, &iov, 1, 0);
        if (r != -2) return r;
    }
    ssize_t r = R.write(fd, buf, n);
    after_write(c, &iov, 1, r);
    return r;
}

EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    if (UNLIKELY(!ensure_init())) return syscall(SYS_writev, fd, iov, cnt);
    struct conn *c = lookup(fd);
    if (LIKELY(!c)) return R.writev(fd, iov, cnt);
    commit_wait();
    if (UNLIKELY(c->replaying)) {
        ssize_t r = replay_write(c, fd, iov, cnt, 0);
        if (r != -2) return r;
    }
    ssize_t r = R.writev(fd, iov, cnt);
    after_write(c, iov, cnt, r);
    return r;
}

EXPORT ssize_t send(int fd, const void *buf, size_t n, int flags)
{
    if (UNLIKELY(!ensure_init())) return syscall(SYS_sendto, fd, buf, n, flags, NULL, 0);
    struct conn *c = lookup(fd);
    if (LIKELY(!c)) return R.send(fd, buf, n, flags);
    commit_wait();
    struct iovec iov = { (void *)buf, n };
    if (UNLIKELY(c->replaying)) {
        ssize_t r = replay_write(c, fd, &iov, 1, flags);
        if (r != -2) return r;
    }
    ssize_t r = R.send(fd, buf, n, flags);
    after_write(c, &iov, 1, r);
    return r;
}

EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags,
                      const struct sockaddr *addr, socklen_t alen)
{
    if (UNLIKELY(!ensure_init())) return syscall(SYS_sendto, fd, buf, n, flags, addr, alen);
    struct conn *c = lookup(fd);
    if (LIKELY(!c)) return R.sendto(fd, buf, n, flags, addr, alen);
    commit_wait();
    struct iovec iov = { (void *)buf, n };
    if (UNLIKELY(c->replaying)) {
        ssize_t r = replay_write(c, fd, &iov, 1, flags);
        if (r != -2) return r;
    }
    ssize_t r = R.sendto(fd, buf, n, flags, addr, alen);
    after_write(c, &iov, 1, r);
    return r;
}

EXPORT ssize_t sendmsg(int fd, const struct msghdr *mh, int flags)
{
    if (UNLIKELY(!ensure_init())) return syscall(SYS_sendmsg, fd, mh, flags);
    struct conn *c = lookup(fd);
    if (LIKELY(!c)) return R.sendmsg(fd, mh, flags);
    commit_wait();
    if (UNLIKELY(c->replaying)) {
        ssize_t r = replay_write(c, fd, mh->msg_iov, (int)mh->msg_iovlen, flags);
        if (r != -2) return r;
    }
    ssize_t r = R.sendmsg(fd, mh, flags);
    after_write(c, mh->msg_iov, (int)mh->msg_iovlen, r);
    return r;
}

/* Checksum `n` bytes of in_fd from `off` (pread: the file offset is untouched). */
static void crc_file(struct conn *c, int in_fd, off_t off, size_t n)
{
    char buf[16384];
    while (n) {
        ssize_t r = pread(in_fd, buf, n < sizeof buf ? n : sizeof buf, off);
        if (r <= 0) {
            if (r < 0 && errno == EINTR) continue;
            dbg("conn %llu: cannot checksum sendfile source", (unsigned long long)c->id);
            return;
        }
        c->wcrc = crc_update(c->wcrc, buf, (size_t)r);
        off += r;
        n -= (size_t)r;
    }
}

static ssize_t prot_sendfile(struct conn *c, sendfile_fn real, int out, int in, off_t *offp,
                             size_t count)
{
    int saved;
    commit_wait();
    off_t start = offp ? *offp : lseek(in, 0, SEEK_CUR);
    size_t skipped = 0;
    if (UNLIKELY(c->replaying) && c->wtotal < c->discard) {
        uint64_t left = c->discard - c->wtotal;
        skipped = count <= left ? count : (size_t)left;
        crc_file(c, in, start, skipped);
        c->wtotal += skipped;
        if (offp) *offp += (off_t)skipped;
        else lseek(in, (off_t)skipped, SEEK_CUR);
        if (c->wtotal == c->discard) report_writemark(c, WM_DISCARD_END);
        if (skipped == count) { replay_check_done(c); return (ssize_t)count; }
        start += (off_t)skipped;
        count -= skipped;
    }
    ssize_t r = real(out, in, offp, count);
    saved = errno;
    if (r > 0) {
        crc_file(c, in, start, (size_t)r);
        c->wtotal += (uint64_t)r;
    }
    if (UNLIKELY(c->replaying)) replay_check_done(c);
    errno = saved;
    if (skipped) return (ssize_t)skipped + (r > 0 ? r : 0);
    return r;
}

EXPORT ssize_t sendfile(int out, int in, off_t *off, size_t count)
{
    if (UNLIKELY(!ensure_init())) return syscall(SYS_sendfile, out, in, off, count);
    struct conn *c = lookup(out);
    if (LIKELY(!c)) return R.sendfile(out, in, off, count);
    return prot_sendfile(c, R.sendfile, out, in, off, count);
}

EXPORT ssize_t sendfile64(int out, int in, off_t *off, size_t count)
{
    if (UNLIKELY(!ensure_init())) return syscall(SYS_sendfile, out, in, off, count);
    struct conn *c = lookup(out);
    if (LIKELY(!c)) return R.sendfile64(out, in, off, count);
    return prot_sendfile(c, R.sendfile64, out, in, off, count);
}

/* ------------------------------------------------------------------ */
/* shutdown / close / dup                                              */
/* ------------------------------------------------------------------ */

EXPORT int shutdown(int fd, int how)
{
    if (UNLIKELY(!ensure_init())) return (int)syscall(SYS_shutdown, fd, how);
    struct conn *c = lookup(fd);
    if (c && how >= SHUT_RD && how <= SHUT_RDWR)
        report_close(c, how == SHUT_RD ? HOW_SHUT_RD : how == SHUT_WR ? HOW_SHUT_WR
                                                                      : HOW_SHUT_RDWR);
    return R.shutdown(fd, how);
}

/*
 * Forget fd in the table before the real close (or the implicit close of a
 * dup2 target).  If it was this process's last reference to a protected
 * connection, report CLOSE and wait for the ack first.
 */
static void forget_fd(int fd)
{
    pthread_mutex_lock(&tab_lock);
    struct conn *c = lookup(fd);
    if (!c) { pthread_mutex_unlock(&tab_lock); return; }
    tab_set(fd, NULL);
    int last = --c->nrefs == 0;
    pthread_mutex_unlock(&tab_lock);
    if (last) {
        report_close(c, HOW_CLOSE);
        conn_free(c);
    }
}

/* The agent socket is ours: an application closing "all fds" must not take it. */
static inline int is_agent_fd(int fd) { return fd >= 0 && fd == S.fd; }

/* dup2/dup3 onto our agent socket: move the agent socket out of the way first. */
static void move_agent_fd(void)
{
    pthread_mutex_lock(&S.lock);
    int nfd = R.fcntl(S.fd, F_DUPFD_CLOEXEC, S.fd + 1);
    if (nfd >= 0) { R.close(S.fd); S.fd = nfd; }
    pthread_mutex_unlock(&S.lock);
}

EXPORT int close(int fd)
{
    if (UNLIKELY(!ensure_init())) return (int)syscall(SYS_close, fd);
    if (LIKELY(!lookup(fd))) {
        if (UNLIKELY(is_agent_fd(fd) && S.active)) return 0;
        return R.close(fd);
    }
    forget_fd(fd);
    return R.close(fd);
}

static void track_dup(int oldfd, int newfd)
{
    if (newfd < 0) return;
    pthread_mutex_lock(&tab_lock);
    struct conn *c = lookup(oldfd);
    if (c && !lookup(newfd)) {
        c->nrefs++;
        tab_set(newfd, c);
    }
    pthread_mutex_unlock(&tab_lock);
}

EXPORT int dup(int fd)
{
    if (UNLIKELY(!ensure_init())) return (int)syscall(SYS_dup, fd);
    int r = R.dup(fd);
    if (UNLIKELY(r >= 0 && lookup(fd))) track_dup(fd, r);
    return r;
}

static int do_dup3(int oldfd, int newfd, int flags, int is_dup2)
{
    if (UNLIKELY(oldfd == newfd)) return is_dup2 ? R.dup2(oldfd, newfd) : R.dup3(oldfd, newfd, flags);
    if (UNLIKELY(S.active && is_agent_fd(newfd))) move_agent_fd();
    if (UNLIKELY(lookup(newfd))) forget_fd(newfd);
    int r = is_dup2 ? R.dup2(oldfd, newfd) : R.dup3(oldfd, newfd, flags);
    if (UNLIKELY(r >= 0 && lookup(oldfd))) track_dup(oldfd, r);
    return r;
}

EXPORT int dup2(int oldfd, int newfd)
{
    if (UNLIKELY(!ensure_init())) return (int)syscall(SYS_dup2, oldfd, newfd);
    return do_dup3(oldfd, newfd, 0, 1);
}

EXPORT int dup3(int oldfd, int newfd, int flags)
{
    if (UNLIKELY(!ensure_init())) return (int)syscall(SYS_dup3, oldfd, newfd, flags);
    return do_dup3(oldfd, newfd, flags, 0);
}

static int do_fcntl(fcntl_fn real, int fd, int cmd, void *arg)
{
    int r = real(fd, cmd, arg);
    if (UNLIKELY((cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) && r >= 0 && lookup(fd)))
        track_dup(fd, r);
    return r;
}

EXPORT int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (UNLIKELY(!ensure_init())) return (int)syscall(SYS_fcntl, fd, cmd, arg);
    return do_fcntl(R.fcntl, fd, cmd, arg);
}

EXPORT int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (UNLIKELY(!ensure_init())) return (int)syscall(SYS_fcntl, fd, cmd, arg);
    return do_fcntl(R.fcntl64, fd, cmd, arg);
}

EXPORT int close_range(unsigned int first, unsigned int last, int flags)
{
    if (UNLIKELY(!ensure_init() || !R.close_range)) {
        return (int)syscall(SYS_close_range, first, last, flags);
    }
    if (!S.active) return R.close_range(first, last, flags);
    if (!(flags & CLOSE_RANGE_CLOEXEC) && atomic_load(&nconns) > 0) {
        unsigned hi = last < MAXFD - 1 ? last : MAXFD - 1;
        for (unsigned fd = first; fd <= hi; fd++)
            if (lookup((int)fd)) forget_fd((int)fd);
    }
    int afd = S.fd;
    if (afd >= 0 && (unsigned)afd >= first && (unsigned)afd <= last) {
        int r = 0;
        if ((unsigned)afd > first) r = R.close_range(first, (unsigned)afd - 1, flags);
        if (r == 0 && (unsigned)afd < last) r = R.close_range((unsigned)afd + 1, last, flags);
        return r;
    }
    return R.close_range(first, last, flags);
}

/* ------------------------------------------------------------------ */
/* fork                                                                */
/* ------------------------------------------------------------------ */

/*
 * fork, and the fork race.  A socat-like server closes its copy of an
 * accepted socket right after fork(): that close must not be taken for the
 * application's last close while the child (which may not have reached the
 * agent yet) holds the connection.  So:
 *
 *   prepare (S.lock, then tab_lock, held across fork): FORK, as before; when
 *     the fork goes through our fork() wrapper, also snapshot the conn ids
 *     the child will inherit and make a pipe.
 *   parent, in fork() after the real fork returned (S.lock still held, so no
 *     other thread's close can come first on this session): FORKED
 *     {child pid, conn ids} with a pidfd of the child; then close the pipe.
 *   child: waits for the pipe's EOF (the parent announced it, or died), then
 *     opens its own session (HELLO) and says HOLD for each conn.
 *
 * The agent therefore handles FORKED before the child's HELLO and before any
 * later close by the parent.  A fork that does not go through our wrapper
 * (none in practice) falls back to FORK + HOLD.  Nothing of this runs when
 * the process holds no protected connection (nconns == 0).
 */
/* 1: this thread is in our fork() wrapper; 2: and its prepare set FK up */
static __thread int fork_wrapped;
static struct {
    int on;             /* announce this fork (set in prepare, S.lock held) */
    int rfd, wfd;       /* the child waits for EOF on rfd */
    uint64_t *ids;
    uint32_t n;
} FK = { .rfd = -1, .wfd = -1 };
static unsigned mark_gen; /* tab_lock held (or single-threaded child) */

/* Both locks held.  Conn ids of the table, each once, into FK.ids. */
static void fork_snapshot(void)
{
    int max = atomic_load(&nconns);
    FK.ids = max > 0 ? malloc((size_t)max * sizeof *FK.ids) : NULL;
    if (!FK.ids) return;
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) { free(FK.ids); FK.ids = NULL; return; }
    FK.rfd = p[0];
    FK.wfd = p[1];
    FK.n = 0;
    mark_gen++;
    for (unsigned ch = 0; ch < NCHUNKS && FK.n < (uint32_t)max; ch++) {
        struct conn **t = atomic_load(&table[ch]);
        if (!t) continue;
        for (unsigned i = 0; i < CHUNK && FK.n < (uint32_t)max; i++) {
            struct conn *c = t[i];
            if (!c || c->mark_gen == mark_gen) continue;
            c->mark_gen = mark_gen;
            FK.ids[FK.n++] = c->id;
        }
    }
    FK.on = 1;
}

static void atfork_prepare(void)
{
    pthread_mutex_lock(&S.lock);
    int announce = 0;
    FK.on = 0;
    if (atomic_load(&nconns) > 0 && S.fd >= 0) {
        struct m_conn m = { .h = { M_FORK, 0, 0 }, .conn_id = 0 };
        if (raw_send(&m, sizeof m, -1) < 0) session_lost("send fork");
        else announce = fork_wrapped;
    }
    pthread_mutex_lock(&tab_lock);
    if (announce) {
        fork_snapshot();
        if (FK.on) fork_wrapped = 2;
    }
}

static void atfork_parent(void)
{
    pthread_mutex_unlock(&tab_lock);
    if (fork_wrapped != 2) pthread_mutex_unlock(&S.lock); /* else fork() announces, unlocks */
}

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

/* Parent, after the real fork, S.lock held since prepare: FORKED, release the child. */
static void fork_announce(pid_t pid)
{
    int saved = errno;
    if (pid > 0 && S.fd >= 0 && !atomic_load(&S.dead)) {
        int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
        uint32_t done = 0;
        do {
            uint32_t n = FK.n - done < FORKED_CHUNK ? FK.n - done : FORKED_CHUNK;
            struct { struct m_forked m; uint64_t ids[FORKED_CHUNK]; } pkt;
            pkt.m = (struct m_forked){ .h = { M_FORKED, 0, 0 }, .pid = (uint32_t)pid, .count = n };
            memcpy(pkt.ids, FK.ids + done, n * sizeof *FK.ids);
            if (raw_send(&pkt, sizeof pkt.m + n * sizeof *FK.ids, done == 0 ? pfd : -1) < 0) {
                session_lost("send forked");
                break;
            }
            done += n;
        } while (done < FK.n);
        if (pfd >= 0) R.close(pfd);
        dbg("forked %d holding %u conn(s)", (int)pid, FK.n);
    }
    R.close(FK.wfd); /* the child's EOF: it may open its session now */
    R.close(FK.rfd);
    FK.rfd = FK.wfd = -1;
    free(FK.ids);
    FK.ids = NULL;
    FK.on = 0;
    pthread_mutex_unlock(&S.lock);
    errno = saved;
}

EXPORT pid_t fork(void)
{
    if (UNLIKELY(!ensure_init() || !R.fork)) { errno = ENOSYS; return -1; }
    if (!S.active) return R.fork();
    fork_wrapped = 1;
    pid_t pid = R.fork();
    int announce = fork_wrapped == 2;
    fork_wrapped = 0;
    if (pid != 0 && announce) fork_announce(pid); /* parent (or a failed fork) */
    return pid;
}

/*
 * TEST ONLY: FTCP_TEST_SHIM_CHILD_DELAY_MS=N makes a forked child that holds
 * protected connections sleep N ms before it opens its session (the window
 * in which the agent has not heard from it).  Read at fork time, in the
 * child, so a test server can set it for one fork only.  Never set it in
 * production: the child is stalled inside fork().
 */
static void test_child_delay(void)
{
    const char *d = getenv("FTCP_TEST_SHIM_CHILD_DELAY_MS");
    long ms = d ? strtol(d, NULL, 10) : 0;
    if (ms <= 0) return;
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
}

static void atfork_child(void)
{
    pthread_mutex_init(&tab_lock, NULL);
    pthread_mutex_init(&S.lock, NULL);
    int wait_fd = -1;
    if (FK.on) {
        R.close(FK.wfd);
        wait_fd = FK.rfd;
        free(FK.ids);
        FK.ids = NULL;
        FK.rfd = FK.wfd = -1;
        FK.on = 0;
    }
    if (S.fd >= 0) R.close(S.fd);
    S.fd = -1;
    if (S.page) munmap(S.page, 4096);
    S.page = NULL;
    atomic_store(&S.reported, 0);
    S.parent_session = S.session_id;
    S.session_id = 0;
    S.session_pid = 0;
    if (atomic_load(&nconns) > 0 && !atomic_load(&S.dead)) test_child_delay();
    if (wait_fd >= 0) {
        char b;
        while (R.read(wait_fd, &b, 1) < 0 && errno == EINTR) {}
        R.close(wait_fd);
    }
    if (atomic_load(&nconns) == 0 || atomic_load(&S.dead)) return;
    pthread_mutex_lock(&S.lock);
    if (session_ensure() == 0) {
        mark_gen++;
        for (unsigned ch = 0; ch < NCHUNKS; ch++) {
            struct conn **t = atomic_load(&table[ch]);
            if (!t) continue;
            for (unsigned i = 0; i < CHUNK; i++) {
                struct conn *c = t[i];
                if (!c || c->mark_gen == mark_gen) continue;
                c->mark_gen = mark_gen;
                struct m_conn m = { .h = { M_HOLD, 0, 0 }, .conn_id = c->id };
                if (raw_send(&m, sizeof m, -1) < 0) { session_lost("send hold"); goto out; }
            }
        }
    }
out:
    pthread_mutex_unlock(&S.lock);
}

/* ------------------------------------------------------------------ */
/* exit                                                                */
/* ------------------------------------------------------------------ */

/*
 * A voluntary exit closes the process's fds without close() calls: report
 * those closes so the agent does not take a clean exit for a crash (a holder
 * that ends holding a connection crashed).  exit() and return from main come
 * through the destructor; _exit()/_Exit() (forking servers' children, Python's
 * os._exit) through the wrappers below.  Fatal signals skip both: a crash.
 * Conns are not freed here: other threads may still be running.
 */
static void report_exit_closes(void)
{
    if (!S.active || atomic_load(&nconns) == 0 || atomic_load(&S.dead)) return;
    /* A vfork child shares our memory and our session: it must not speak for us. */
    if (S.session_pid != 0 && S.session_pid != (pid_t)syscall(SYS_getpid)) return;
    for (unsigned ch = 0; ch < NCHUNKS; ch++) {
        struct conn **t = atomic_load(&table[ch]);
        if (!t) continue;
        for (unsigned i = 0; i < CHUNK; i++) {
            pthread_mutex_lock(&tab_lock);
            struct conn *c = t[i];
            int last = 0;
            if (c) {
                tab_set((int)(ch * CHUNK + i), NULL);
                last = --c->nrefs == 0;
            }
            pthread_mutex_unlock(&tab_lock);
            if (last) report_close(c, HOW_CLOSE);
        }
    }
}

__attribute__((destructor)) static void shim_dtor(void) { report_exit_closes(); }

EXPORT void _exit(int status)
{
    if (LIKELY(atomic_load_explicit(&init_done, memory_order_acquire))) report_exit_closes();
    if (R._exit) R._exit(status);
    syscall(SYS_exit_group, status);
    __builtin_unreachable();
}

EXPORT void _Exit(int status)
{
    if (LIKELY(atomic_load_explicit(&init_done, memory_order_acquire))) report_exit_closes();
    if (R._Exit) R._Exit(status);
    syscall(SYS_exit_group, status);
    __builtin_unreachable();
}
