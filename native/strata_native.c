/*
 * strata._native: the hot loops of strata, with the same signatures as the
 * pure-Python reference in src/strata/_py/kernels.py.
 *
 * Bitmaps returned by changed_sectors / nonzero_blocks are LSB-first
 * (numpy.packbits(bitorder="little")): bit i lives in byte i/8, bit i%8.
 * The GIL is released around every scan of RELEASE_GIL_BYTES or more, so threads can
 * run them in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>

#include "strata_mft.h"

/* Below this much input a scan is shorter than handing the GIL to a waiting thread and
 * taking it back: measured, 1 000 is_zero calls on ~10 KiB chunks took 0.51-0.70 ms while
 * two threads compressed with the GIL released per call, 0.05 ms holding it. */
#define RELEASE_GIL_BYTES ((Py_ssize_t)256 * 1024)
#define SCAN_BEGIN(n) \
    { \
        PyThreadState *scan_save_ = (n) >= RELEASE_GIL_BYTES ? PyEval_SaveThread() : NULL;
#define SCAN_END \
    if (scan_save_) \
        PyEval_RestoreThread(scan_save_); \
    }

static int buffer_is_zero(const unsigned char *p, Py_ssize_t n)
{
    /* Check a short head by hand, then compare the buffer against itself
     * shifted by the head: glibc's vectorised memcmp does the rest at
     * memory bandwidth. */
    const Py_ssize_t head = n < 16 ? n : 16;
    for (Py_ssize_t i = 0; i < head; i++)
        if (p[i])
            return 0;
    if (n <= head)
        return 1;
    return memcmp(p, p + head, (size_t)(n - head)) == 0;
}

static PyObject *py_is_zero(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    int zero;
    (void)self;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    SCAN_BEGIN(view.len)
    zero = buffer_is_zero((const unsigned char *)view.buf, view.len);
    SCAN_END
    PyBuffer_Release(&view);
    return PyBool_FromLong(zero);
}

static PyObject *py_changed_sectors(PyObject *self, PyObject *args)
{
    Py_buffer a, b;
    Py_ssize_t sector_size;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*n", &a, &b, &sector_size))
        return NULL;
    if (sector_size <= 0) {
        PyErr_SetString(PyExc_ValueError, "sector_size must be positive");
        goto done;
    }
    if (a.len != b.len || a.len % sector_size) {
        PyErr_SetString(PyExc_ValueError,
                        "buffers must have equal length, a multiple of sector_size");
        goto done;
    }
    {
        const Py_ssize_t count = a.len / sector_size;
        result = PyBytes_FromStringAndSize(NULL, (count + 7) / 8);
        if (!result)
            goto done;
        unsigned char *bits = (unsigned char *)PyBytes_AS_STRING(result);
        const unsigned char *pa = a.buf, *pb = b.buf;
        SCAN_BEGIN(a.len)
        memset(bits, 0, (size_t)((count + 7) / 8));
        for (Py_ssize_t i = 0; i < count; i++) {
            const Py_ssize_t off = i * sector_size;
            if (memcmp(pa + off, pb + off, (size_t)sector_size))
                bits[i >> 3] |= (unsigned char)(1u << (i & 7));
        }
        SCAN_END
    }
done:
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return result;
}

static PyObject *py_nonzero_blocks(PyObject *self, PyObject *args)
{
    Py_buffer a;
    Py_ssize_t block_size;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*n", &a, &block_size))
        return NULL;
    if (block_size <= 0) {
        PyErr_SetString(PyExc_ValueError, "block_size must be positive");
        goto done;
    }
    {
        const Py_ssize_t count = (a.len + block_size - 1) / block_size;
        result = PyBytes_FromStringAndSize(NULL, (count + 7) / 8);
        if (!result)
            goto done;
        unsigned char *bits = (unsigned char *)PyBytes_AS_STRING(result);
        const unsigned char *p = a.buf;
        SCAN_BEGIN(a.len)
        memset(bits, 0, (size_t)((count + 7) / 8));
        for (Py_ssize_t i = 0; i < count; i++) {
            const Py_ssize_t off = i * block_size;
            const Py_ssize_t len = a.len - off < block_size ? a.len - off : block_size;
            if (!buffer_is_zero(p + off, len))
                bits[i >> 3] |= (unsigned char)(1u << (i & 7));
        }
        SCAN_END
    }
done:
    PyBuffer_Release(&a);
    return result;
}

static inline int bit_at(const unsigned char *bits, Py_ssize_t i, int msb_first)
{
    const unsigned shift = msb_first ? 7u - (unsigned)(i & 7) : (unsigned)(i & 7);
    return (bits[i >> 3] >> shift) & 1;
}

static PyObject *py_bitmap_runs(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"bitmap", "msb_first", "nbits", NULL};
    Py_buffer bm;
    int msb_first;
    Py_ssize_t nbits = -1;
    PyObject *runs = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*p|n", keywords, &bm, &msb_first, &nbits))
        return NULL;
    if (nbits < 0 || nbits > bm.len * 8)
        nbits = bm.len * 8;
    runs = PyList_New(0);
    if (!runs)
        goto done;
    {
        const unsigned char *bits = bm.buf;
        Py_ssize_t i = 0;
        while (i < nbits) {
            /* Skip whole zero bytes quickly; they dominate sparse bitmaps. */
            if ((i & 7) == 0 && bits[i >> 3] == 0) {
                i += 8;
                continue;
            }
            if (!bit_at(bits, i, msb_first)) {
                i++;
                continue;
            }
            Py_ssize_t start = i;
            while (i < nbits) {
                if ((i & 7) == 0 && i + 8 <= nbits && bits[i >> 3] == 0xFF) {
                    i += 8;
                    continue;
                }
                if (!bit_at(bits, i, msb_first))
                    break;
                i++;
            }
            PyObject *run = Py_BuildValue("(nn)", start, i - start);
            if (!run || PyList_Append(runs, run) < 0) {
                Py_XDECREF(run);
                Py_CLEAR(runs);
                goto done;
            }
            Py_DECREF(run);
        }
    }
done:
    PyBuffer_Release(&bm);
    return runs;
}

/*
 * FastCDC (Xia et al., USENIX ATC 2016) with normalized chunking, level 2.
 *
 * The cut test at byte i uses the gear hash of the 64-byte window ending at
 * i, W(i) = sum_k G[b[i-k]] << k: rolling fp = (fp << 1) + G[b] over 64 bytes
 * yields exactly W(i), so cut points depend only on content and the numpy
 * reference can compute W for every position at once.  Masks take the top
 * bits, which depend on the whole window.
 */
static uint64_t gear[256];
static int gear_ready;

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void init_gear(void)
{
    uint64_t state = 0x5354524154414744ull; /* "STRATAGD" */
    for (int i = 0; i < 256; i++)
        gear[i] = splitmix64(&state);
    gear_ready = 1;
}

static uint64_t top_mask(int bits)
{
    return bits <= 0 ? 0 : (~0ull) << (64 - bits);
}

static int log2_exact(Py_ssize_t v)
{
    int bits = 0;
    while (((Py_ssize_t)1 << bits) < v)
        bits++;
    return ((Py_ssize_t)1 << bits) == v ? bits : -1;
}

/* Length of the next chunk starting at p (n bytes available), or 0 when the
 * data ends before a cut and more may follow. */
static Py_ssize_t next_cut(const unsigned char *p, Py_ssize_t n, Py_ssize_t min_size,
                           Py_ssize_t avg_size, Py_ssize_t max_size,
                           uint64_t mask_s, uint64_t mask_l, int final)
{
    if (n <= min_size)
        return final ? n : 0;
    Py_ssize_t limit = n < max_size ? n : max_size;
    Py_ssize_t normal = avg_size < limit ? avg_size : limit;
    uint64_t fp = 0;
    Py_ssize_t i = min_size - 64;
    for (; i < min_size - 1; i++)
        fp = (fp << 1) + gear[p[i]];
    for (; i < normal; i++) {
        fp = (fp << 1) + gear[p[i]];
        if (!(fp & mask_s) && i + 1 >= min_size)
            return i + 1;
    }
    for (; i < limit; i++) {
        fp = (fp << 1) + gear[p[i]];
        if (!(fp & mask_l))
            return i + 1;
    }
    if (limit == max_size)
        return max_size;
    return final ? n : 0;
}

static PyObject *py_fastcdc_cuts(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"buf", "min_size", "avg_size", "max_size", "final", NULL};
    Py_buffer view;
    Py_ssize_t min_size, avg_size, max_size;
    int final = 1;
    PyObject *cuts = NULL;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*nnn|p", keywords, &view, &min_size,
                                     &avg_size, &max_size, &final))
        return NULL;
    int avg_bits = log2_exact(avg_size);
    if (min_size < 64 || avg_bits < 8 || min_size > avg_size || avg_size > max_size) {
        PyErr_SetString(PyExc_ValueError,
                        "need 64 <= min_size <= avg_size <= max_size, avg_size a power of two >= 256");
        goto done;
    }
    if (!gear_ready)
        init_gear();
    {
        /* every cut but the last is at least min_size past the one before */
        Py_ssize_t *ends = PyMem_Malloc((size_t)(view.len / min_size + 2) * sizeof(Py_ssize_t));
        if (!ends) {
            PyErr_NoMemory();
            goto done;
        }
        const unsigned char *p = view.buf;
        const uint64_t mask_s = top_mask(avg_bits + 2), mask_l = top_mask(avg_bits - 2);
        Py_ssize_t pos = 0, count = 0;
        SCAN_BEGIN(view.len)
        while (pos < view.len) {
            Py_ssize_t len = next_cut(p + pos, view.len - pos, min_size, avg_size, max_size,
                                      mask_s, mask_l, final);
            if (len == 0)
                break;
            pos += len;
            ends[count++] = pos;
        }
        SCAN_END
        cuts = PyList_New(count);
        for (Py_ssize_t i = 0; cuts && i < count; i++) {
            PyObject *end = PyLong_FromSsize_t(ends[i]);
            if (!end)
                Py_CLEAR(cuts);
            else
                PyList_SET_ITEM(cuts, i, end);
        }
        PyMem_Free(ends);
    }
done:
    PyBuffer_Release(&view);
    return cuts;
}

/* LZNT1 ([MS-XCA] 2.5; Russon 7.4), mirroring strata/_py/lznt1.py step for step, problems
 * included: returns (bytes, None, 0) or (b"", problem, byte position). */
#define LZNT1_CHUNK 4096

typedef struct {
    unsigned char *out;
    Py_ssize_t len, cap;
    const char *problem;
    Py_ssize_t pos;
    long a, b; /* the offset and length a bad back reference names */
} lznt1_state;

static int lznt1_chunk(const unsigned char *data, Py_ssize_t start, Py_ssize_t end,
                       lznt1_state *st)
{
    const Py_ssize_t base = st->len;
    Py_ssize_t pos = start;
    while (pos < end) {
        const unsigned flags = data[pos++];
        for (int bit = 0; bit < 8; bit++) {
            if (pos >= end)
                return 0;
            if (!(flags >> bit & 1)) {
                if (st->len >= st->cap)
                    return -1;
                st->out[st->len++] = data[pos++];
                continue;
            }
            if (pos + 2 > end) {
                st->problem = "back reference cut short";
                st->pos = pos;
                return 1;
            }
            const unsigned token = data[pos] | (unsigned)data[pos + 1] << 8;
            pos += 2;
            const Py_ssize_t done = st->len - base;
            if (done == 0) {
                st->problem = "back reference before any literal";
                st->pos = pos;
                return 1;
            }
            unsigned mask = 0x0FFF, shift = 12;
            for (Py_ssize_t p = done - 1; p >= 0x10; p >>= 1) {
                mask >>= 1;
                shift--;
            }
            const long length = (long)(token & mask) + 3, offset = (long)(token >> shift) + 1;
            if (offset > done || done + length > LZNT1_CHUNK) {
                st->problem = "back reference";
                st->pos = pos;
                st->a = offset;
                st->b = length;
                return 1;
            }
            if (st->len + length > st->cap)
                return -1;
            /* An overlapping reference repeats its last ``offset`` bytes: copy from as far
             * back as a whole number of periods allows, so each memcpy is disjoint and the
             * copied span doubles (a run of one byte is not 4096 one-byte copies). */
            unsigned char *dst = st->out + st->len;
            for (long copied = 0; copied < length;) {
                const long span = (copied + offset) / offset * offset;
                const long n = length - copied < span ? length - copied : span;
                memcpy(dst + copied, dst + copied - span, (size_t)n);
                copied += n;
            }
            st->len += length;
        }
    }
    return 0;
}

static int lznt1_run(const unsigned char *data, Py_ssize_t n, Py_ssize_t limit, lznt1_state *st)
{
    Py_ssize_t pos = 0;
    while (pos + 2 <= n && st->len < limit) {
        const unsigned header = data[pos] | (unsigned)data[pos + 1] << 8;
        if (header == 0)
            break;
        const Py_ssize_t size = (Py_ssize_t)(header & 0x0FFF) + 1;
        const Py_ssize_t start = pos + 2, end = pos + 2 + size;
        if (end > n) {
            st->problem = "chunk runs past the unit";
            st->pos = pos;
            st->a = (long)size;
            return 1;
        }
        if (header & 0x8000) {
            const Py_ssize_t before = st->len;
            const int rc = lznt1_chunk(data, start, end, st);
            if (rc)
                return rc;
            if (st->len - before > LZNT1_CHUNK) {
                st->problem = "chunk expands past 4 KiB";
                st->pos = pos;
                return 1;
            }
        } else {
            if (st->len + size > st->cap)
                return -1;
            memcpy(st->out + st->len, data + start, (size_t)size);
            st->len += size;
        }
        pos = end;
    }
    return 0;
}

static PyObject *lznt1_problem(const lznt1_state *st)
{
    if (strcmp(st->problem, "back reference") == 0)
        return PyUnicode_FromFormat("back reference %ld bytes back, %ld long", st->a, st->b);
    if (strcmp(st->problem, "chunk runs past the unit") == 0)
        return PyUnicode_FromFormat("chunk of %ld bytes runs past the unit", st->a);
    return PyUnicode_FromString(st->problem);
}

static PyObject *py_lznt1_decompress(PyObject *self, PyObject *args)
{
    Py_buffer in;
    Py_ssize_t limit;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*n", &in, &limit))
        return NULL;
    if (limit < 0)
        limit = 0;
    /* A chunk takes at least 3 input bytes and gives at most 8 KiB (back references stop at
     * 4 KiB, literals after them at the chunk's own size, before "expands past 4 KiB" is
     * seen), and one may start just below the limit: the output never needs more than this. */
    const Py_ssize_t per_chunk = 2 * LZNT1_CHUNK, most = (in.len / 3 + 1) * per_chunk;
    lznt1_state st = {NULL, 0, (limit < most ? limit : most) + per_chunk, NULL, 0, 0, 0};
    st.out = PyMem_Malloc((size_t)st.cap);
    if (st.out == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = lznt1_run(in.buf, in.len, limit, &st);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        PyErr_SetString(PyExc_RuntimeError, "lznt1: output bound exceeded (a strata bug)");
    else if (rc > 0) {
        PyObject *problem = lznt1_problem(&st);
        if (problem)
            result = Py_BuildValue("(yNn)", "", problem, st.pos);
    } else
        result = Py_BuildValue("(y#On)", (const char *)st.out, st.len < limit ? st.len : limit,
                               Py_None, (Py_ssize_t)0);
done:
    PyMem_Free(st.out);
    PyBuffer_Release(&in);
    return result;
}

/* CRC-32C (RFC 3720 B.4, reflected polynomial 0x82F63B78), mirroring strata/_py/crc32c.py:
 * SSE4.2's crc32 instruction when the CPU has it, a table otherwise. */
static uint32_t crc32c_table[256];

static void crc32c_init_table(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[n] = c;
    }
}

static uint32_t crc32c_soft(uint32_t c, const unsigned char *p, size_t n)
{
    while (n--)
        c = crc32c_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t c, const unsigned char *p,
                                                             size_t n)
{
    uint64_t c64 = c;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c64 = __builtin_ia32_crc32di(c64, word);
    }
    c = (uint32_t)c64;
    while (n--)
        c = __builtin_ia32_crc32qi(c, *p++);
    return c;
}
#endif

static uint32_t (*crc32c_impl)(uint32_t, const unsigned char *, size_t) = crc32c_soft;

static PyObject *py_crc32c(PyObject *self, PyObject *args)
{
    Py_buffer view;
    unsigned long crc = 0;
    uint32_t c;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*|k", &view, &crc))
        return NULL;
    SCAN_BEGIN(view.len)
    c = crc32c_impl((uint32_t)crc ^ 0xFFFFFFFFu, view.buf, (size_t)view.len) ^ 0xFFFFFFFFu;
    SCAN_END
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(c);
}

/* pread_pieces: many small positioned reads (scattered MFT records) in one call.  The
 * Python loop it replaces cost ~1 us a piece on top of the ~1 us pread itself, measured
 * on 1 000 records of 1 KiB.  Every buffer is taken first, then the GIL is released once
 * for all the reads. */
static Py_ssize_t pieces_held(PyObject *seq, Py_buffer *views, long long *offsets,
                              long long limit)
{
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *offset_obj, *buf_obj;
        if (!PyArg_ParseTuple(items[i], "OO", &offset_obj, &buf_obj))
            return -i - 2;
        offsets[i] = PyLong_AsLongLong(offset_obj);
        if (offsets[i] == -1 && PyErr_Occurred())
            return -i - 2;
        if (PyObject_GetBuffer(buf_obj, &views[i], PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
            return -i - 2;
        if (offsets[i] < 0 || views[i].len > limit - offsets[i]) {
            PyBuffer_Release(&views[i]);
            return i; /* out of range: the caller reports it */
        }
    }
    return n;
}

static Py_ssize_t pread_all(int fd, const Py_buffer *views, const long long *offsets,
                            Py_ssize_t n, int *err)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        char *p = views[i].buf;
        Py_ssize_t left = views[i].len;
        long long at = offsets[i];
        while (left > 0) {
            ssize_t got = pread(fd, p, (size_t)left, (off_t)at);
            if (got < 0 && errno == EINTR)
                continue;
            if (got < 0) {
                *err = errno;
                return i;
            }
            if (got == 0)
                return i; /* end of file: the caller says the file shrank */
            p += got;
            at += got;
            left -= got;
        }
    }
    return n;
}

static PyObject *py_pread_pieces(PyObject *self, PyObject *args)
{
    int fd;
    long long limit;
    PyObject *pieces, *seq;
    (void)self;
    if (!PyArg_ParseTuple(args, "iOL", &fd, &pieces, &limit))
        return NULL;
    seq = PySequence_Fast(pieces, "pieces must be a sequence of (offset, buffer)");
    if (!seq)
        return NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_buffer *views = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Py_buffer));
    long long *offsets = PyMem_Calloc((size_t)(n ? n : 1), sizeof(long long));
    PyObject *result = NULL;
    if (!views || !offsets) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t held = pieces_held(seq, views, offsets, limit);
    if (held < -1) {
        for (Py_ssize_t i = 0; i < -held - 2; i++)
            PyBuffer_Release(&views[i]);
        goto done;
    }
    int err = 0;
    Py_ssize_t done_count;
    Py_BEGIN_ALLOW_THREADS
    done_count = pread_all(fd, views, offsets, held, &err);
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < held; i++)
        PyBuffer_Release(&views[i]);
    if (err) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    result = PyLong_FromSsize_t(done_count);
done:
    PyMem_Free(views);
    PyMem_Free(offsets);
    Py_DECREF(seq);
    return result;
}

/* join_spans: the spans of every column of a row, then the next row's.  Each column is
 * (data, spans), spans holding int64 (start, length) pairs, one per row. */
typedef struct {
    Py_buffer data;
    Py_buffer spans;
} span_column;

static void release_columns(span_column *cols, Py_ssize_t held_data, Py_ssize_t held_spans)
{
    for (Py_ssize_t c = 0; c < held_data; c++)
        PyBuffer_Release(&cols[c].data);
    for (Py_ssize_t c = 0; c < held_spans; c++)
        PyBuffer_Release(&cols[c].spans);
}

/* The bytes all spans of ``col`` add up to, or -1 (ValueError set) when one lies outside
 * its data. */
static Py_ssize_t column_total(const span_column *col, Py_ssize_t rows)
{
    const long long *span = col->spans.buf;
    const long long size = (long long)col->data.len;
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < rows; i++) {
        const long long start = span[2 * i], length = span[2 * i + 1];
        if (start < 0 || length < 0 || start > size || length > size - start) {
            PyErr_Format(PyExc_ValueError, "span %zd (%lld, %lld) lies outside its %lld bytes",
                         i, start, length, size);
            return -1;
        }
        if (length > PY_SSIZE_T_MAX - total) {
            PyErr_SetString(PyExc_OverflowError, "joined spans are too long");
            return -1;
        }
        total += (Py_ssize_t)length;
    }
    return total;
}

static void copy_spans(char *out, const span_column *cols, Py_ssize_t ncols, Py_ssize_t rows)
{
    for (Py_ssize_t i = 0; i < rows; i++)
        for (Py_ssize_t c = 0; c < ncols; c++) {
            const long long *span = (const long long *)cols[c].spans.buf + 2 * i;
            memcpy(out, (const char *)cols[c].data.buf + span[0], (size_t)span[1]);
            out += span[1];
        }
}

static PyObject *py_join_spans(PyObject *self, PyObject *arg)
{
    (void)self;
    PyObject *seq = PySequence_Fast(arg, "columns must be a sequence of (data, spans)");
    if (!seq)
        return NULL;
    const Py_ssize_t ncols = PySequence_Fast_GET_SIZE(seq);
    span_column *cols = PyMem_Calloc((size_t)(ncols ? ncols : 1), sizeof(span_column));
    PyObject *result = NULL;
    Py_ssize_t held = 0, rows = 0, total = 0;
    if (!cols) {
        PyErr_NoMemory();
        goto done;
    }
    for (; held < ncols; held++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, held);
        PyObject *data, *spans;
        if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "OO", &data, &spans)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "a column is a (data, spans) tuple");
            goto release;
        }
        if (PyObject_GetBuffer(data, &cols[held].data, PyBUF_SIMPLE) < 0)
            goto release;
        if (PyObject_GetBuffer(spans, &cols[held].spans, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&cols[held].data);
            goto release;
        }
        const Py_ssize_t n = cols[held].spans.len / 16;
        if (cols[held].spans.len % 16 || (held > 0 && n != rows)) {
            PyErr_SetString(PyExc_ValueError,
                            "spans must hold one int64 (start, length) pair per row, "
                            "the same rows in every column");
            held++;
            goto release;
        }
        rows = n;
    }
    for (Py_ssize_t c = 0; c < ncols; c++) {
        const Py_ssize_t part = column_total(&cols[c], rows);
        if (part < 0)
            goto release;
        if (part > PY_SSIZE_T_MAX - total) {
            PyErr_SetString(PyExc_OverflowError, "joined spans are too long");
            goto release;
        }
        total += part;
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result) {
        SCAN_BEGIN(total)
        copy_spans(PyBytes_AS_STRING(result), cols, ncols, rows);
        SCAN_END
    }
release:
    release_columns(cols, held, held);
done:
    PyMem_Free(cols);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"is_zero", py_is_zero, METH_O, "is_zero(buf) -> True when every byte is zero."},
    {"changed_sectors", py_changed_sectors, METH_VARARGS,
     "changed_sectors(a, b, sector_size) -> LSB-first bitmap, bit i set when sector i differs."},
    {"nonzero_blocks", py_nonzero_blocks, METH_VARARGS,
     "nonzero_blocks(buf, block_size) -> LSB-first bitmap, bit i set when block i holds a non-zero byte."},
    {"bitmap_runs", (PyCFunction)(void (*)(void))py_bitmap_runs, METH_VARARGS | METH_KEYWORDS,
     "bitmap_runs(bitmap, msb_first, nbits=-1) -> [(start, length)] runs of set bits."},
    {"crc32c", py_crc32c, METH_VARARGS,
     "crc32c(data, crc=0) -> CRC-32C of data, continuing from crc."},
    {"lznt1_decompress", py_lznt1_decompress, METH_VARARGS,
     "lznt1_decompress(data, limit) -> (bytes, None, 0), or (b'', problem, position)."},
    {"mft_scan", strata_mft_scan, METH_VARARGS,
     "mft_scan(buf, record_size, want_attributes) -> (codes, live, attrs, si, fn, sizes, ads, "
     "reparse): a window of MFT records fixed up in place and walked (see strata_mft.c)."},
    {"pread_pieces", py_pread_pieces, METH_VARARGS,
     "pread_pieces(fd, pieces, limit) -> how many (offset, buffer) pieces, in order, were "
     "filled whole from fd; it stops at one that ends past limit or at end of file."},
    {"join_spans", py_join_spans, METH_O,
     "join_spans(columns) -> bytes: for each row, the span (start, length) of each column's "
     "data, columns being (data, spans) with one int64 pair per row in spans."},
    {"fastcdc_cuts", (PyCFunction)(void (*)(void))py_fastcdc_cuts, METH_VARARGS | METH_KEYWORDS,
     "fastcdc_cuts(buf, min_size, avg_size, max_size, final=True) -> [chunk end offsets]."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "strata._native", "strata's C kernels.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void)
{
    crc32c_init_table();
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2"))
        crc32c_impl = crc32c_hw;
#endif
    return PyModule_Create(&module);
}
