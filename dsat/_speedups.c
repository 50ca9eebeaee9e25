/* dsat._speedups: per-line steps of the orchester's hot path, compiled.
 *
 * Optional: setup.py builds it when a C compiler is there, and the callers
 * (through dsat.compiled) fall back to their pure-Python versions when it is
 * not, or when DSAT_PURE_PYTHON is set.  Each function gives exactly what its Python
 * version gives (tests/test_speedups.py compares them on random and hostile
 * batches) and answers None for a batch it does not handle, for the Python
 * version to take (and raise what it raises):
 *
 *   group_by_place(points, table[, kind])  dsat.placement.CarbonCh.group
 *       (kind 0, the default) and Fnv1aCh.group (kind 1), the first step
 *       of their split: (path, ts, value) tuples grouped by the entry of
 *       the 65,536-entry *table* at the ring position of their path: the
 *       first 16 bits of the MD5 of its UTF-8 (carbon_ch), or the halves of
 *       its 32-bit FNV-1a XORed (fnv1a_ch);
 *   group_by_jump(points, order, replication)  dsat.placement.JumpFnv1aCh.group:
 *       the points grouped by the tuple of the *replication* entries of
 *       *order* carbon-c-relay's jump_fnv1a_ch picks for their path;
 *   encode_plaintext(points)  dsat.graphite_wire.encode_plaintext: the lines
 *       f"{path} {value!r} {int(ts)}\n" of (path, ts, value) tuples, as UTF-8;
 *   split_by_owner(body, count)  dsat.shards.split_by_owner: the lines of
 *       a chunk grouped by the owner of their name (its Adler-32 modulo the
 *       number of ingress processes);
 *   simple_tagged(path)  dsat.naming._simple_tagged: the canonical form of
 *       the usual tagged path (None means "not usual" in both, and the
 *       caller then reads the path the long way, dsat.naming.tagged_path).
 *
 * MD5 is RFC 1321's, written out here (the first two bytes of a digest are
 * all that is used, but the whole digest is computed and tested).  FNV-1a
 * reads each byte as carbon-c-relay reads it on amd64, a signed char: a byte
 * from 0x80 up is XORed in sign-extended.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* -- MD5 (RFC 1321) ------------------------------------------------------------------------------- */

#define F(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define G(x, y, z) ((y) ^ ((z) & ((x) ^ (y))))
#define H(x, y, z) ((x) ^ (y) ^ (z))
#define I(x, y, z) ((y) ^ ((x) | ~(z)))
#define STEP(f, a, b, c, d, x, t, s) \
    (a) += f((b), (c), (d)) + (x) + (t); \
    (a) = (((a) << (s)) | (((a) & 0xffffffffu) >> (32 - (s)))); \
    (a) += (b);

static void md5_block(uint32_t state[4], const unsigned char *p) {
    uint32_t x[16];
    for (int i = 0; i < 16; i++) {
        x[i] = (uint32_t)p[4 * i] | ((uint32_t)p[4 * i + 1] << 8) | ((uint32_t)p[4 * i + 2] << 16) |
               ((uint32_t)p[4 * i + 3] << 24);
    }
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    STEP(F, a, b, c, d, x[0], 0xd76aa478, 7)
    STEP(F, d, a, b, c, x[1], 0xe8c7b756, 12)
    STEP(F, c, d, a, b, x[2], 0x242070db, 17)
    STEP(F, b, c, d, a, x[3], 0xc1bdceee, 22)
    STEP(F, a, b, c, d, x[4], 0xf57c0faf, 7)
    STEP(F, d, a, b, c, x[5], 0x4787c62a, 12)
    STEP(F, c, d, a, b, x[6], 0xa8304613, 17)
    STEP(F, b, c, d, a, x[7], 0xfd469501, 22)
    STEP(F, a, b, c, d, x[8], 0x698098d8, 7)
    STEP(F, d, a, b, c, x[9], 0x8b44f7af, 12)
    STEP(F, c, d, a, b, x[10], 0xffff5bb1, 17)
    STEP(F, b, c, d, a, x[11], 0x895cd7be, 22)
    STEP(F, a, b, c, d, x[12], 0x6b901122, 7)
    STEP(F, d, a, b, c, x[13], 0xfd987193, 12)
    STEP(F, c, d, a, b, x[14], 0xa679438e, 17)
    STEP(F, b, c, d, a, x[15], 0x49b40821, 22)
    STEP(G, a, b, c, d, x[1], 0xf61e2562, 5)
    STEP(G, d, a, b, c, x[6], 0xc040b340, 9)
    STEP(G, c, d, a, b, x[11], 0x265e5a51, 14)
    STEP(G, b, c, d, a, x[0], 0xe9b6c7aa, 20)
    STEP(G, a, b, c, d, x[5], 0xd62f105d, 5)
    STEP(G, d, a, b, c, x[10], 0x02441453, 9)
    STEP(G, c, d, a, b, x[15], 0xd8a1e681, 14)
    STEP(G, b, c, d, a, x[4], 0xe7d3fbc8, 20)
    STEP(G, a, b, c, d, x[9], 0x21e1cde6, 5)
    STEP(G, d, a, b, c, x[14], 0xc33707d6, 9)
    STEP(G, c, d, a, b, x[3], 0xf4d50d87, 14)
    STEP(G, b, c, d, a, x[8], 0x455a14ed, 20)
    STEP(G, a, b, c, d, x[13], 0xa9e3e905, 5)
    STEP(G, d, a, b, c, x[2], 0xfcefa3f8, 9)
    STEP(G, c, d, a, b, x[7], 0x676f02d9, 14)
    STEP(G, b, c, d, a, x[12], 0x8d2a4c8a, 20)
    STEP(H, a, b, c, d, x[5], 0xfffa3942, 4)
    STEP(H, d, a, b, c, x[8], 0x8771f681, 11)
    STEP(H, c, d, a, b, x[11], 0x6d9d6122, 16)
    STEP(H, b, c, d, a, x[14], 0xfde5380c, 23)
    STEP(H, a, b, c, d, x[1], 0xa4beea44, 4)
    STEP(H, d, a, b, c, x[4], 0x4bdecfa9, 11)
    STEP(H, c, d, a, b, x[7], 0xf6bb4b60, 16)
    STEP(H, b, c, d, a, x[10], 0xbebfbc70, 23)
    STEP(H, a, b, c, d, x[13], 0x289b7ec6, 4)
    STEP(H, d, a, b, c, x[0], 0xeaa127fa, 11)
    STEP(H, c, d, a, b, x[3], 0xd4ef3085, 16)
    STEP(H, b, c, d, a, x[6], 0x04881d05, 23)
    STEP(H, a, b, c, d, x[9], 0xd9d4d039, 4)
    STEP(H, d, a, b, c, x[12], 0xe6db99e5, 11)
    STEP(H, c, d, a, b, x[15], 0x1fa27cf8, 16)
    STEP(H, b, c, d, a, x[2], 0xc4ac5665, 23)
    STEP(I, a, b, c, d, x[0], 0xf4292244, 6)
    STEP(I, d, a, b, c, x[7], 0x432aff97, 10)
    STEP(I, c, d, a, b, x[14], 0xab9423a7, 15)
    STEP(I, b, c, d, a, x[5], 0xfc93a039, 21)
    STEP(I, a, b, c, d, x[12], 0x655b59c3, 6)
    STEP(I, d, a, b, c, x[3], 0x8f0ccc92, 10)
    STEP(I, c, d, a, b, x[10], 0xffeff47d, 15)
    STEP(I, b, c, d, a, x[1], 0x85845dd1, 21)
    STEP(I, a, b, c, d, x[8], 0x6fa87e4f, 6)
    STEP(I, d, a, b, c, x[15], 0xfe2ce6e0, 10)
    STEP(I, c, d, a, b, x[6], 0xa3014314, 15)
    STEP(I, b, c, d, a, x[13], 0x4e0811a1, 21)
    STEP(I, a, b, c, d, x[4], 0xf7537e82, 6)
    STEP(I, d, a, b, c, x[11], 0xbd3af235, 10)
    STEP(I, c, d, a, b, x[2], 0x2ad7d2bb, 15)
    STEP(I, b, c, d, a, x[9], 0xeb86d391, 21)
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
}

/* The 16-byte MD5 digest of data[0:size]. */
static void md5(const unsigned char *data, size_t size, unsigned char digest[16]) {
    uint32_t state[4] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476};
    unsigned char tail[128];
    size_t whole = size & ~(size_t)63, rest = size - whole;
    for (size_t at = 0; at < whole; at += 64) {
        md5_block(state, data + at);
    }
    memcpy(tail, data + whole, rest);
    tail[rest] = 0x80;
    size_t end = rest < 56 ? 64 : 128;
    memset(tail + rest + 1, 0, end - rest - 1);
    uint64_t bits = (uint64_t)size << 3;
    for (int i = 0; i < 8; i++) {
        tail[end - 8 + i] = (unsigned char)(bits >> (8 * i));
    }
    md5_block(state, tail);
    if (end == 128) {
        md5_block(state, tail + 64);
    }
    for (int i = 0; i < 16; i++) {
        digest[i] = (unsigned char)(state[i / 4] >> (8 * (i % 4)));
    }
}

/* -- UTF-8 of a str, borrowed where it can be ----------------------------------------------------- */

/* The UTF-8 of *text* (an exact str): its own bytes when it is ASCII, else a new bytes object in *hold*
 * (for the caller to release).  NULL, with no exception set, when *text* cannot be encoded. */
static const char *utf8_of(PyObject *text, Py_ssize_t *size, PyObject **hold) {
    *hold = NULL;
    if (PyUnicode_IS_ASCII(text)) {
        *size = PyUnicode_GET_LENGTH(text);
        return (const char *)PyUnicode_DATA(text);
    }
    *hold = PyUnicode_AsUTF8String(text);
    if (*hold == NULL) {
        PyErr_Clear();
        return NULL;
    }
    *size = PyBytes_GET_SIZE(*hold);
    return PyBytes_AS_STRING(*hold);
}

/* -- FNV-1a and the jump hash (carbon-c-relay's) ------------------------------------------------------- */

static uint32_t fnv1a_32(const unsigned char *data, size_t size) {
    uint32_t hash = 2166136261u;
    for (size_t i = 0; i < size; i++) {
        hash = (hash ^ (uint32_t)(int32_t)(signed char)data[i]) * 16777619u;
    }
    return hash;
}

static uint64_t fnv1a_64(const unsigned char *data, size_t size) {
    uint64_t hash = 14695981039346656037ull;
    for (size_t i = 0; i < size; i++) {
        hash = (hash ^ (uint64_t)(int64_t)(signed char)data[i]) * 1099511628211ull;
    }
    return hash;
}

/* Lamping and Veach's jump consistent hash of *key* into [0, buckets), in doubles as carbon-c-relay computes it. */
static Py_ssize_t jump_bucket(uint64_t key, Py_ssize_t buckets) {
    long long bucket = -1, jump = 0;
    while (jump < buckets) {
        bucket = jump;
        key = key * 2862933555777941757ull + 1;
        jump = (long long)((double)(bucket + 1) * ((double)(1ll << 31) / (double)((key >> 33) + 1)));
    }
    return (Py_ssize_t)bucket;
}

/* -- group_by_place and group_by_jump ------------------------------------------------------------- */

#define RING_POSITIONS 65536
#define MAX_BUCKETS 4096

/* The path of a (path, ts, value) point as UTF-8 (see utf8_of), or NULL for a point this module does not handle. */
static const char *point_path(PyObject *point, Py_ssize_t *size, PyObject **hold) {
    *hold = NULL;
    if (!PyTuple_CheckExact(point) || PyTuple_GET_SIZE(point) != 3) {
        return NULL;
    }
    PyObject *path = PyTuple_GET_ITEM(point, 0);
    return PyUnicode_CheckExact(path) ? utf8_of(path, size, hold) : NULL;
}

/* Append *point* to the list at *key* of *groups* (made when new); the last key and list are remembered, so that a
 * run of one key skips the dict.  -1 with an exception set on failure. */
static int add_to_group(PyObject *groups, PyObject *key, PyObject *point, PyObject **last_key, PyObject **last_group) {
    PyObject *group = key == *last_key ? *last_group : PyDict_GetItemWithError(groups, key);
    if (group == NULL) {
        if (PyErr_Occurred() || (group = PyList_New(0)) == NULL) {
            return -1;
        }
        int failed = PyDict_SetItem(groups, key, group);
        Py_DECREF(group); /* the dict holds it */
        if (failed) {
            return -1;
        }
    }
    if (PyList_Append(group, point) < 0) {
        return -1;
    }
    *last_key = key;
    *last_group = group;
    return 0;
}

/* The (path, ts, value) points of the list *points* grouped by the entry of the 65,536-entry list *table* at
 * the ring position of each path (kind 0: carbon_ch's MD5, 1: fnv1a_ch's FNV-1a; a dict: entry -> list of points,
 * in their order), or None. */
static PyObject *group_by_place(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "group_by_place(points, table[, kind])");
        return NULL;
    }
    PyObject *points = args[0], *table = args[1];
    long kind = nargs == 3 && PyLong_CheckExact(args[2]) ? PyLong_AsLong(args[2]) : (nargs == 3 ? -1 : 0);
    if (kind == -1 && PyErr_Occurred()) {
        PyErr_Clear();
    }
    if ((kind != 0 && kind != 1) || !PyList_CheckExact(points) || !PyList_CheckExact(table) ||
        PyList_GET_SIZE(table) != RING_POSITIONS) {
        Py_RETURN_NONE;
    }
    PyObject *groups = PyDict_New();
    if (groups == NULL) {
        return NULL;
    }
    PyObject *last_entry = NULL, *last_group = NULL; /* borrowed: runs of one destination skip the dict */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(points); i++) {
        PyObject *point = PyList_GET_ITEM(points, i), *hold;
        Py_ssize_t size;
        const char *bytes = point_path(point, &size, &hold);
        if (bytes == NULL) {
            Py_DECREF(groups);
            Py_RETURN_NONE;
        }
        Py_ssize_t position;
        if (kind == 0) {
            unsigned char digest[16];
            md5((const unsigned char *)bytes, (size_t)size, digest);
            position = ((Py_ssize_t)digest[0] << 8) | digest[1];
        } else {
            uint32_t hash = fnv1a_32((const unsigned char *)bytes, (size_t)size);
            position = (Py_ssize_t)((hash >> 16) ^ (hash & 0xffffu));
        }
        Py_XDECREF(hold);
        if (add_to_group(groups, PyList_GET_ITEM(table, position), point, &last_entry, &last_group) < 0) {
            Py_DECREF(groups);
            return NULL;
        }
    }
    return groups;
}

/* The points of the list *points* grouped by the tuple of the *replication* entries of the list *order* that
 * carbon-c-relay's jump_fnv1a_ch gives each path (a dict: tuple -> list of points, in their order), or None. */
static PyObject *group_by_jump(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "group_by_jump(points, order, replication)");
        return NULL;
    }
    PyObject *points = args[0], *order = args[1];
    Py_ssize_t count = PyList_CheckExact(order) ? PyList_GET_SIZE(order) : 0;
    Py_ssize_t replication = PyLong_CheckExact(args[2]) ? PyLong_AsSsize_t(args[2]) : -1;
    if (replication == -1 && PyErr_Occurred()) {
        PyErr_Clear();
    }
    if (!PyList_CheckExact(points) || count < 1 || count > MAX_BUCKETS || replication < 1 || replication > count) {
        Py_RETURN_NONE;
    }
    PyObject *groups = PyDict_New(), *singles = PyList_New(count); /* singles: (order[b],) for each bucket */
    Py_ssize_t *buckets = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)count);
    if (groups == NULL || singles == NULL || buckets == NULL) {
        Py_XDECREF(groups);
        Py_XDECREF(singles);
        PyMem_Free(buckets);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t b = 0; b < count; b++) {
        PyObject *single = PyTuple_Pack(1, PyList_GET_ITEM(order, b));
        if (single == NULL) {
            goto failed;
        }
        PyList_SET_ITEM(singles, b, single);
    }
    PyObject *last_key = NULL, *last_group = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(points); i++) {
        PyObject *point = PyList_GET_ITEM(points, i), *hold;
        Py_ssize_t size;
        const char *bytes = point_path(point, &size, &hold);
        if (bytes == NULL) {
            Py_DECREF(groups);
            Py_DECREF(singles);
            PyMem_Free(buckets);
            Py_RETURN_NONE;
        }
        uint64_t key = fnv1a_64((const unsigned char *)bytes, (size_t)size);
        Py_XDECREF(hold);
        PyObject *group_key;
        if (replication == 1) {
            group_key = PyList_GET_ITEM(singles, jump_bucket(key, count));
            Py_INCREF(group_key);
        } else {
            for (Py_ssize_t b = 0; b < count; b++) {
                buckets[b] = b;
            }
            if ((group_key = PyTuple_New(replication)) == NULL) {
                goto failed;
            }
            for (Py_ssize_t r = 0, left = count;; r++) {
                Py_ssize_t bucket = jump_bucket(key, left);
                PyObject *index = PyList_GET_ITEM(order, buckets[bucket]);
                Py_INCREF(index);
                PyTuple_SET_ITEM(group_key, r, index);
                if (r + 1 == replication) {
                    break;
                }
                key ^= key >> 12; /* xorshift64*: the key of the next replica */
                key ^= key << 25;
                key ^= key >> 27;
                key *= 2685821657736338717ull;
                buckets[bucket] = buckets[--left];
            }
        }
        /* Tuples made per point are never the same object: only a single's run is remembered. */
        if (replication > 1) {
            last_key = NULL;
        }
        int status = add_to_group(groups, group_key, point, &last_key, &last_group);
        Py_DECREF(group_key);
        if (status < 0) {
            goto failed;
        }
    }
    Py_DECREF(singles);
    PyMem_Free(buckets);
    return groups;
failed:
    Py_DECREF(groups);
    Py_DECREF(singles);
    PyMem_Free(buckets);
    return NULL;
}

/* The 32-bit FNV-1a, its 16-bit ring position and the 64-bit FNV-1a of a bytes object, and the jump bucket of
 * that 64-bit hash among *buckets*: what the groupings compute, for the tests to compare with Python's. */
static PyObject *fnv1a_digest(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    Py_ssize_t buckets = nargs == 2 && PyLong_Check(args[1]) ? PyLong_AsSsize_t(args[1]) : -1;
    if (nargs != 2 || !PyBytes_Check(args[0]) || buckets < 1) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "fnv1a_digest(bytes, buckets >= 1)");
        }
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    size_t size = (size_t)PyBytes_GET_SIZE(args[0]);
    uint32_t hash32 = fnv1a_32(data, size);
    uint64_t hash64 = fnv1a_64(data, size);
    return Py_BuildValue("(kkKn)", (unsigned long)hash32, (unsigned long)((hash32 >> 16) ^ (hash32 & 0xffffu)),
                         (unsigned long long)hash64, jump_bucket(hash64, buckets));
}

/* The MD5 digest of a bytes object: what group_by_place hashes, for the tests to compare with hashlib's. */
static PyObject *md5_digest(PyObject *module, PyObject *data) {
    (void)module;
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "md5_digest(bytes)");
        return NULL;
    }
    unsigned char digest[16];
    md5((const unsigned char *)PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data), digest);
    return PyBytes_FromStringAndSize((const char *)digest, 16);
}

/* -- encode_plaintext ----------------------------------------------------------------------------- */

typedef struct {
    char *data;
    size_t size, capacity;
} Buffer;

static int reserve(Buffer *buffer, size_t more) {
    if (buffer->size + more <= buffer->capacity) {
        return 0;
    }
    size_t capacity = buffer->capacity ? buffer->capacity : 4096;
    while (capacity < buffer->size + more) {
        capacity *= 2;
    }
    char *data = PyMem_Realloc(buffer->data, capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    buffer->data = data;
    buffer->capacity = capacity;
    return 0;
}

static int append(Buffer *buffer, const char *text, size_t size) {
    if (reserve(buffer, size) < 0) {
        return -1;
    }
    memcpy(buffer->data + buffer->size, text, size);
    buffer->size += size;
    return 0;
}

/* Outcome of appending one field: written, not handled here (the Python version takes the batch), or an error. */
enum { DONE = 0, NOT_HANDLED = 1, FAILED = -1 };

/* repr(value) for an exact float (what float.__repr__ calls) or an exact int that fits 64 bits. */
static int append_value(Buffer *buffer, PyObject *value) {
    char digits[32];
    if (PyFloat_CheckExact(value)) {
        char *text = PyOS_double_to_string(PyFloat_AS_DOUBLE(value), 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (text == NULL) {
            return FAILED;
        }
        int status = append(buffer, text, strlen(text));
        PyMem_Free(text);
        return status;
    }
    if (PyLong_CheckExact(value)) {
        int overflow;
        long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow || (number == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return NOT_HANDLED;
        }
        return append(buffer, digits, (size_t)snprintf(digits, sizeof digits, "%lld", number));
    }
    return NOT_HANDLED;
}

/* int(ts): an exact float truncated toward zero (well inside 64 bits), or an exact int that fits 64 bits. */
static int append_timestamp(Buffer *buffer, PyObject *ts) {
    char digits[32];
    long long number;
    if (PyFloat_CheckExact(ts)) {
        double seconds = PyFloat_AS_DOUBLE(ts);
        if (!(seconds > -9.0e18 && seconds < 9.0e18)) { /* NaN, infinities and the very large: Python's int() */
            return NOT_HANDLED;
        }
        number = (long long)seconds;
    } else if (PyLong_CheckExact(ts)) {
        int overflow;
        number = PyLong_AsLongLongAndOverflow(ts, &overflow);
        if (overflow || (number == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return NOT_HANDLED;
        }
    } else {
        return NOT_HANDLED;
    }
    return append(buffer, digits, (size_t)snprintf(digits, sizeof digits, "%lld", number));
}

static int append_point(Buffer *buffer, PyObject *point) {
    if (!PyTuple_CheckExact(point) || PyTuple_GET_SIZE(point) != 3 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(point, 0))) {
        return NOT_HANDLED;
    }
    PyObject *hold;
    Py_ssize_t size;
    const char *path = utf8_of(PyTuple_GET_ITEM(point, 0), &size, &hold);
    if (path == NULL) {
        return NOT_HANDLED;
    }
    int status = append(buffer, path, (size_t)size);
    Py_XDECREF(hold);
    if (status == DONE) {
        status = append(buffer, " ", 1);
    }
    if (status == DONE) {
        status = append_value(buffer, PyTuple_GET_ITEM(point, 2));
    }
    if (status == DONE) {
        status = append(buffer, " ", 1);
    }
    if (status == DONE) {
        status = append_timestamp(buffer, PyTuple_GET_ITEM(point, 1));
    }
    if (status == DONE) {
        status = append(buffer, "\n", 1);
    }
    return status;
}

static PyObject *encode_plaintext(PyObject *module, PyObject *points) {
    (void)module;
    if (!PyList_CheckExact(points)) {
        Py_RETURN_NONE;
    }
    Buffer buffer = {NULL, 0, 0};
    Py_ssize_t count = PyList_GET_SIZE(points);
    if (reserve(&buffer, (size_t)count * 64 + 1) < 0) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        int status = append_point(&buffer, PyList_GET_ITEM(points, i));
        if (status != DONE) {
            PyMem_Free(buffer.data);
            if (status == NOT_HANDLED) {
                Py_RETURN_NONE;
            }
            return NULL;
        }
    }
    PyObject *out = PyBytes_FromStringAndSize(buffer.data, (Py_ssize_t)buffer.size);
    PyMem_Free(buffer.data);
    return out;
}

/* -- split_by_owner ------------------------------------------------------------------------------- */

/* zlib's Adler-32 of data[0:size]. */
static uint32_t adler32(const unsigned char *data, size_t size) {
    uint32_t a = 1, b = 0;
    while (size > 0) {
        size_t run = size < 5552 ? size : 5552; /* the most bytes before b can overflow 32 bits */
        size -= run;
        while (run--) {
            a += *data++;
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    return (b << 16) | a;
}

static int is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

/* dsat.shards.split_by_owner: the lines of *body* (bytes ending with a newline) grouped by the Adler-32 of their
 * name (what precedes the line's first ASCII whitespace) modulo *count*, each line ending with a newline, in
 * their order; a part with no line is b"".  None for anything else. */
static PyObject *split_by_owner(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "split_by_owner(body, count)");
        return NULL;
    }
    PyObject *body = args[0];
    long count = PyLong_Check(args[1]) ? PyLong_AsLong(args[1]) : -1;
    if (count == -1 && PyErr_Occurred()) {
        PyErr_Clear();
    }
    Py_ssize_t size = PyBytes_CheckExact(body) ? PyBytes_GET_SIZE(body) : 0;
    if (count < 1 || count > 4096 || size == 0 || PyBytes_AS_STRING(body)[size - 1] != '\n') {
        Py_RETURN_NONE;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(body), *end = data + size;
    Py_ssize_t lines = 0;
    for (const unsigned char *at = data; at < end; at++) {
        lines += *at == '\n';
    }
    uint16_t *owners = PyMem_Malloc(sizeof(uint16_t) * (size_t)lines);
    Py_ssize_t *sizes = PyMem_Calloc((size_t)count, sizeof(Py_ssize_t));
    PyObject *parts = PyList_New(count);
    char **into = PyMem_Calloc((size_t)count, sizeof(char *));
    if (owners == NULL || sizes == NULL || parts == NULL || into == NULL) {
        PyMem_Free(owners);
        PyMem_Free(sizes);
        PyMem_Free(into);
        Py_XDECREF(parts);
        return PyErr_NoMemory();
    }
    Py_ssize_t line = 0;
    for (const unsigned char *start = data; start < end; line++) {
        const unsigned char *name_end = start, *newline = memchr(start, '\n', (size_t)(end - start));
        while (name_end < newline && !is_space(*name_end)) {
            name_end++;
        }
        owners[line] = (uint16_t)(adler32(start, (size_t)(name_end - start)) % (uint32_t)count);
        sizes[owners[line]] += newline + 1 - start;
        start = newline + 1;
    }
    for (long index = 0; index < count; index++) {
        PyObject *part = PyBytes_FromStringAndSize(NULL, sizes[index]);
        if (part == NULL) {
            PyMem_Free(owners);
            PyMem_Free(sizes);
            PyMem_Free(into);
            Py_DECREF(parts);
            return NULL;
        }
        into[index] = PyBytes_AS_STRING(part);
        PyList_SET_ITEM(parts, index, part);
    }
    line = 0;
    for (const unsigned char *start = data; start < end; line++) {
        const unsigned char *newline = memchr(start, '\n', (size_t)(end - start));
        size_t length = (size_t)(newline + 1 - start);
        memcpy(into[owners[line]], start, length);
        into[owners[line]] += length;
        start = newline + 1;
    }
    PyMem_Free(owners);
    PyMem_Free(sizes);
    PyMem_Free(into);
    return parts;
}

/* -- simple_tagged -------------------------------------------------------------------------------- */

/* Characters of a safe component ([A-Za-z0-9_\-:+=@%#~]), of a tag key ([A-Za-z0-9_\-:+@%#.]) and of a tag
 * value after its first character ([A-Za-z0-9_\-:+=@%#.~]; the first is one of those but "~"). */
static int in_set(unsigned char c, const char *punctuation) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr(punctuation, c) != NULL);
}
#define COMPONENT_PUNCTUATION "_-:+=@%#~"
#define KEY_PUNCTUATION "_-:+@%#."
#define VALUE_PUNCTUATION "_-:+=@%#.~"
#define MAX_COMPONENT_BYTES 200

typedef struct {
    const unsigned char *start;
    Py_ssize_t size, key_size;
} Segment;

static int compare_segments(const void *left, const void *right) {
    const Segment *a = left, *b = right;
    int order = memcmp(a->start, b->start, (size_t)(a->size < b->size ? a->size : b->size));
    return order ? order : (a->size > b->size) - (a->size < b->size);
}

/* dsat.naming._simple_tagged: the canonical form of the usual tagged path (a safe ASCII name not starting with
 * "~", then ;key=value tags of safe characters, no key twice, no "name" key), its ";key=value" strings sorted;
 * None for any other path. */
static PyObject *simple_tagged(PyObject *module, PyObject *path) {
    (void)module;
    if (!PyUnicode_CheckExact(path) || !PyUnicode_IS_ASCII(path)) {
        Py_RETURN_NONE;
    }
    const unsigned char *text = (const unsigned char *)PyUnicode_DATA(path);
    Py_ssize_t size = PyUnicode_GET_LENGTH(path), at = 0, component = 0;
    if (size == 0 || text[0] == '~') {
        Py_RETURN_NONE;
    }
    for (; at < size && text[at] != ';'; at++) { /* the name: safe components joined by dots */
        if (text[at] == '.') {
            if (component == 0) {
                Py_RETURN_NONE;
            }
            component = 0;
        } else if (!in_set(text[at], COMPONENT_PUNCTUATION) || ++component > MAX_COMPONENT_BYTES) {
            Py_RETURN_NONE;
        }
    }
    Py_ssize_t name_size = at, count = 0;
    if (component == 0 || at == size) {
        Py_RETURN_NONE; /* an empty last component, or no tag */
    }
    for (Py_ssize_t i = at; i < size; i++) {
        count += text[i] == ';';
    }
    Segment *segments = PyMem_Malloc(sizeof(Segment) * (size_t)count);
    if (segments == NULL) {
        return PyErr_NoMemory();
    }
    for (Py_ssize_t index = 0; index < count; index++) { /* at is on a ";" */
        Segment *segment = &segments[index];
        segment->start = text + ++at;
        Py_ssize_t key = 0;
        while (at < size && text[at] != '=' && text[at] != ';' && in_set(text[at], KEY_PUNCTUATION)) {
            at++, key++;
        }
        int good = key > 0 && at < size && text[at] == '=';
        if (good) {
            at++;
            good = at < size && text[at] != '~' && in_set(text[at], VALUE_PUNCTUATION);
            while (good && at < size && text[at] != ';') {
                good = in_set(text[at++], VALUE_PUNCTUATION);
            }
        }
        if (!good) {
            PyMem_Free(segments);
            Py_RETURN_NONE;
        }
        segment->key_size = key;
        segment->size = (Py_ssize_t)(text + at - segment->start);
    }
    qsort(segments, (size_t)count, sizeof(Segment), compare_segments);
    for (Py_ssize_t index = 0; index < count; index++) { /* a key's segments are next to each other once sorted */
        Segment *segment = &segments[index], *before = index ? &segments[index - 1] : NULL;
        int named = segment->key_size == 4 && memcmp(segment->start, "name", 4) == 0;
        int again = before && before->key_size == segment->key_size &&
                    memcmp(before->start, segment->start, (size_t)segment->key_size) == 0;
        if (named || again) {
            PyMem_Free(segments);
            Py_RETURN_NONE;
        }
    }
    PyObject *out = PyUnicode_New(size, 127);
    if (out != NULL) {
        unsigned char *into = (unsigned char *)PyUnicode_DATA(out);
        memcpy(into, text, (size_t)name_size);
        into += name_size;
        for (Py_ssize_t index = 0; index < count; index++) {
            *into++ = ';';
            memcpy(into, segments[index].start, (size_t)segments[index].size);
            into += segments[index].size;
        }
    }
    PyMem_Free(segments);
    return out;
}

/* -- the module ----------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"group_by_place", (PyCFunction)(void (*)(void))group_by_place, METH_FASTCALL,
     "group_by_place(points, table[, kind]): the points by table[ring position of their path], or None"},
    {"group_by_jump", (PyCFunction)(void (*)(void))group_by_jump, METH_FASTCALL,
     "group_by_jump(points, order, replication): the points by their jump_fnv1a_ch destinations, or None"},
    {"fnv1a_digest", (PyCFunction)(void (*)(void))fnv1a_digest, METH_FASTCALL,
     "fnv1a_digest(data, buckets): (FNV-1a 32, its ring position, FNV-1a 64, its jump bucket)"},
    {"split_by_owner", (PyCFunction)(void (*)(void))split_by_owner, METH_FASTCALL,
     "split_by_owner(body, count): the lines of body by the Adler-32 of their names modulo count, or None"},
    {"simple_tagged", simple_tagged, METH_O,
     "simple_tagged(path): the canonical form of the usual tagged path, or None for any other"},
    {"md5_digest", md5_digest, METH_O, "md5_digest(data): the MD5 digest of a bytes object"},
    {"encode_plaintext", encode_plaintext, METH_O,
     "encode_plaintext(points): carbon plaintext lines of a list of (path, ts, value) tuples, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "dsat._speedups",
    .m_doc = "Per-line steps of the orchester's hot path, compiled (see dsat/_speedups.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
