/* producer.c: send one datapoint into a running DSAT topology, from C.
 *
 * It packs one envelope (docs/wire.rst) with msgpack-c and pushes it with
 * libzmq to the orchester's input link, as a satellite does:
 *
 *     producer ADDRESS PATH VALUE TIMESTAMP [TRACKER]
 *
 *   ADDRESS    the orchester's input link, [orchester] listen in the topology
 *              (ipc://.dsat/run/orchester by default, relative to the topology file)
 *   PATH       the metric path: cprobe.temperature, or tagged cprobe.temperature;room=lab
 *   VALUE      a number: 41.5
 *   TIMESTAMP  whole seconds since the Unix epoch
 *   TRACKER    optional, the tracker's events link ([tracker] events): the batch is
 *              then tracked.  It gets a random task_id and the producer reports its
 *              SEND to the tracker, which counts the batch as a happy end once the
 *              orchester has written it to Carbon (`dsat status`).  Without it the
 *              batch is untracked: no events, never retried.
 *
 * Exit status 0 once each frame is queued on a connected socket (closing then waits
 * up to LINGER_MS for it to leave), 1 on any error (said on stderr), 2 on bad
 * arguments.  Build: see README.rst in this folder.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <msgpack.h>
#include <zmq.h>

#define EMITTER "cprobe" /* the step name this program reports as: emitter and step */
#define TYPE "gauge"     /* the batch's type, what the orchester routes on */
#define SEND_TIMEOUT_MS 5000 /* how long to wait for a connected peer, then give up */
#define LINGER_MS 5000       /* how long closing may wait for queued frames to leave */

/* The fields of one envelope this program sets; the others take their defaults. */
struct envelope {
    const char *task_id; /* "" for an untracked batch */
    unsigned long long seq;
    const char *where; /* this host's name */
    const char *channel; /* "data" or "event" */
    const char *event;   /* "" on channel data, "SEND" for the tracker */
    const char *path;    /* the one datapoint, on channel data only */
    long long timestamp;
    double value;
};

/* Each pack_* returns 0 on success, like msgpack-c's own functions. */
static int pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s); /* s must be valid UTF-8: DSAT refuses a frame with invalid UTF-8 */
    return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n); /* str, never bin */
}

static int pack_key_str(msgpack_packer *pk, const char *key, const char *value)
{
    return pack_str(pk, key) || pack_str(pk, value);
}

/* The frame: the 4-byte header, then the body, a msgpack map of 12 of the 13 keys (wid defaults to 0). */
static int pack_frame(msgpack_sbuffer *buf, const struct envelope *env)
{
    msgpack_packer pk;
    int data = strcmp(env->channel, "data") == 0;

    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    if (msgpack_sbuffer_write(buf, "DS\x01\x01", 4)) /* magic "DS", wire version 1, codec 1 = msgpack */
        return -1;
    if (msgpack_pack_map(&pk, 12) || pack_key_str(&pk, "type", TYPE) || pack_key_str(&pk, "emitter", EMITTER)
        || pack_key_str(&pk, "task_id", env->task_id) || pack_str(&pk, "seq")
        || msgpack_pack_unsigned_long_long(&pk, env->seq) || pack_key_str(&pk, "where", env->where)
        || pack_key_str(&pk, "step", EMITTER) || pack_str(&pk, "pid") || msgpack_pack_long(&pk, (long)getpid())
        || pack_str(&pk, "next") || msgpack_pack_array(&pk, data ? 1 : 0) || (data && pack_str(&pk, "orchester"))
        || pack_key_str(&pk, "channel", env->channel) || pack_key_str(&pk, "event", env->event))
        return -1;
    /* meta: on the SEND event, one leg to the orchester holding one datapoint */
    if (pack_str(&pk, "meta") || msgpack_pack_map(&pk, data ? 0 : 3))
        return -1;
    if (!data
        && (pack_str(&pk, "legs") || msgpack_pack_int(&pk, 1) || pack_key_str(&pk, "to", "orchester")
            || pack_str(&pk, "points") || msgpack_pack_int(&pk, 1)))
        return -1;
    /* points: the batch, one [path, timestamp, value]; none in an event */
    if (pack_str(&pk, "points") || msgpack_pack_array(&pk, data ? 1 : 0))
        return -1;
    if (data
        && (msgpack_pack_array(&pk, 3) || pack_str(&pk, env->path) || msgpack_pack_long_long(&pk, env->timestamp)
            || msgpack_pack_double(&pk, env->value)))
        return -1;
    return 0;
}

/* Pack *env* and send it as one message on a PUSH socket connected to *address*. */
static int send_envelope(void *ctx, const char *address, const struct envelope *env)
{
    msgpack_sbuffer buf;
    void *push;
    int timeout = SEND_TIMEOUT_MS, linger = LINGER_MS, immediate = 1, rc = -1;

    msgpack_sbuffer_init(&buf);
    if (pack_frame(&buf, env)) {
        fprintf(stderr, "producer: out of memory packing the envelope\n");
        msgpack_sbuffer_destroy(&buf);
        return -1;
    }
    push = zmq_socket(ctx, ZMQ_PUSH);
    if (push == NULL) {
        fprintf(stderr, "producer: zmq_socket: %s\n", zmq_strerror(errno));
        msgpack_sbuffer_destroy(&buf);
        return -1;
    }
    /* queue only on a connected peer, wait at most SEND_TIMEOUT_MS for one, flush for at most LINGER_MS */
    if (zmq_setsockopt(push, ZMQ_IMMEDIATE, &immediate, sizeof immediate)
        || zmq_setsockopt(push, ZMQ_SNDTIMEO, &timeout, sizeof timeout)
        || zmq_setsockopt(push, ZMQ_LINGER, &linger, sizeof linger))
        fprintf(stderr, "producer: zmq_setsockopt: %s\n", zmq_strerror(errno));
    else if (zmq_connect(push, address))
        fprintf(stderr, "producer: cannot connect to %s: %s\n", address, zmq_strerror(errno));
    else if (zmq_send(push, buf.data, buf.size, 0) < 0) /* one frame = one single-part message */
        fprintf(stderr, "producer: nothing listens at %s (%s after %d ms)\n", address, zmq_strerror(errno),
                timeout);
    else
        rc = 0;
    if (zmq_close(push) && rc == 0) {
        fprintf(stderr, "producer: zmq_close: %s\n", zmq_strerror(errno));
        rc = -1;
    }
    msgpack_sbuffer_destroy(&buf);
    return rc;
}

/* A random task id: 32 lowercase hex digits, a version-4 UUID as Python's uuid.uuid4().hex writes it. */
static int new_task_id(char out[33])
{
    unsigned char b[16];
    FILE *f = fopen("/dev/urandom", "rb");
    size_t got;

    if (f == NULL)
        return -1;
    got = fread(b, 1, sizeof b, f);
    if (fclose(f) || got != sizeof b)
        return -1;
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    for (size_t i = 0; i < sizeof b; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    return 0;
}

int main(int argc, char **argv)
{
    char host[256], task_id[33] = "", *end;
    struct envelope env;
    void *ctx;
    int rc = 0;

    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: %s ADDRESS PATH VALUE TIMESTAMP [TRACKER]\n", argv[0]);
        return 2;
    }
    memset(&env, 0, sizeof env);
    env.path = argv[2];
    errno = 0;
    env.value = strtod(argv[3], &end);
    if (errno || end == argv[3] || *end != '\0' || !isfinite(env.value)) {
        fprintf(stderr, "producer: VALUE %s is not a finite number\n", argv[3]);
        return 2;
    }
    errno = 0;
    env.timestamp = strtoll(argv[4], &end, 10);
    if (errno || end == argv[4] || *end != '\0' || env.timestamp < 0) {
        fprintf(stderr, "producer: TIMESTAMP %s is not whole seconds since the epoch\n", argv[4]);
        return 2;
    }
    if (gethostname(host, sizeof host)) {
        fprintf(stderr, "producer: gethostname: %s\n", strerror(errno));
        return 1;
    }
    host[sizeof host - 1] = '\0'; /* POSIX leaves a truncated name unterminated */
    if (argc == 6 && new_task_id(task_id)) {
        fprintf(stderr, "producer: cannot read /dev/urandom for a task id\n");
        return 1;
    }
    env.task_id = task_id;
    env.seq = 1; /* this program sends one batch; a long-running producer counts up */
    env.where = host;

    ctx = zmq_ctx_new();
    if (ctx == NULL) {
        fprintf(stderr, "producer: zmq_ctx_new: %s\n", zmq_strerror(errno));
        return 1;
    }
    if (argc == 6) {
        /* the emitter's SEND first (the tracker accepts events in any order): one leg, to the orchester */
        env.channel = "event";
        env.event = "SEND";
        rc = send_envelope(ctx, argv[5], &env);
    }
    if (rc == 0) {
        env.channel = "data";
        env.event = "";
        rc = send_envelope(ctx, argv[1], &env);
    }
    if (zmq_ctx_term(ctx) && rc == 0) {
        fprintf(stderr, "producer: zmq_ctx_term: %s\n", zmq_strerror(errno));
        rc = -1;
    }
    return rc == 0 ? 0 : 1;
}
