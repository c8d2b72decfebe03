/*
 * strata._native_store: decode a run of store frames into a caller's buffer, and encode a
 * batch of chunks into frames, without the GIL.
 *
 * References: strata store format 1 (src/strata/store/structs.py FRAME, little-endian:
 * magic[4] version u8 codec u8 flags u16 raw_length u32 stored_length u32 id[16]);
 * zstd frame format, RFC 8878 section 3.1.1; xxHash XXH3 128-bit, canonical (big-endian) form.
 *
 * The pure-Python reference is strata.store.frames.decode_frames.  This is its fast path: the
 * per-chunk Python work (header unpack, stream reader, hash call) cost more than the zstd
 * decode of a 64 KiB chunk.  It only says *which* frame failed; the caller re-runs the
 * reference on that frame to raise the error that names the structure, field and offset.
 * encode_frames is frames.encode_frames' fast path (reference: frames.encode per chunk): a
 * file delta's thousand small chunks cost more in Python per chunk than in zstd.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>
#include <zstd.h>

#define HEADER_SIZE 32
#define FORMAT_VERSION 1
#define CODEC_STORED 0
#define CODEC_ZSTD 1
#define ID_SIZE 16
#define PLAN_FIELDS 4 /* src offset, frame length, dst offset, raw length: int64 each */

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

/* Mirrors frames._check_header and frames._checked: 1 when the frame may be decoded. */
static int header_ok(const unsigned char *h, int64_t frame_len, int64_t raw_len,
                     const unsigned char *magic, const unsigned char *id, int64_t max_raw)
{
    const unsigned codec = h[5];
    const int64_t raw = le32(h + 8), stored = le32(h + 12);
    if (memcmp(h, magic, 4) != 0 || h[4] != FORMAT_VERSION)
        return 0;
    if (codec != CODEC_STORED && codec != CODEC_ZSTD)
        return 0;
    if (raw > max_raw || raw != raw_len || memcmp(h + 16, id, ID_SIZE) != 0)
        return 0;
    if (codec == CODEC_ZSTD && raw == 0)
        return 0;
    if (codec == CODEC_STORED && stored != raw)
        return 0;
    if (stored > (raw > 1 ? raw : 1) * 2 + 1024)
        return 0;
    return HEADER_SIZE + stored <= frame_len;
}

static int inflate_ok(ZSTD_DCtx *dctx, const unsigned char *payload, size_t stored,
                      unsigned char *dst, size_t raw)
{
    /* Exactly one zstd frame, declaring (or not declaring) exactly ``raw`` bytes. */
    const unsigned long long declared = ZSTD_getFrameContentSize(payload, stored);
    if (declared == ZSTD_CONTENTSIZE_ERROR)
        return 0;
    if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != raw)
        return 0;
    if (ZSTD_findFrameCompressedSize(payload, stored) != stored)
        return 0;
    const size_t n = ZSTD_decompressDCtx(dctx, dst, raw, payload, stored);
    return !ZSTD_isError(n) && n == raw;
}

static int id_ok(const unsigned char *data, size_t n, const unsigned char *id)
{
    XXH128_canonical_t canon;
    XXH128_canonicalFromHash(&canon, XXH3_128bits(data, n));
    return memcmp(canon.digest, id, ID_SIZE) == 0;
}

/* Index of the first frame that fails, or -1 when every frame decoded and verified. */
static Py_ssize_t decode_all(ZSTD_DCtx *dctx, const unsigned char *blob, const int64_t *plan,
                             Py_ssize_t count, const unsigned char *ids, unsigned char *out,
                             const unsigned char *magic, int64_t max_raw)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        const int64_t *row = plan + i * PLAN_FIELDS;
        const unsigned char *frame = blob + row[0], *id = ids + i * ID_SIZE;
        unsigned char *dst = out + row[2];
        const size_t raw = (size_t)row[3];
        if (!header_ok(frame, row[1], row[3], magic, id, max_raw))
            return i;
        const size_t stored = le32(frame + 12);
        if (frame[5] == CODEC_STORED)
            memcpy(dst, frame + HEADER_SIZE, raw);
        else if (!inflate_ok(dctx, frame + HEADER_SIZE, stored, dst, raw))
            return i;
        if (!id_ok(dst, raw, id))
            return i;
    }
    return -1;
}

/* Every row's source and destination inside their buffers, before the GIL is let go. */
static int plan_fits(const int64_t *plan, Py_ssize_t count, Py_ssize_t blob_len,
                     Py_ssize_t out_len)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        const int64_t *row = plan + i * PLAN_FIELDS;
        if (row[0] < 0 || row[1] < HEADER_SIZE || row[0] > blob_len - row[1])
            return 0;
        if (row[2] < 0 || row[3] < 0 || row[2] > out_len - row[3])
            return 0;
    }
    return 1;
}

static PyObject *py_decode_frames(PyObject *self, PyObject *args)
{
    Py_buffer blob, plan, ids, out, magic;
    long long max_raw;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*w*y*L", &blob, &plan, &ids, &out, &magic, &max_raw))
        return NULL;
    const Py_ssize_t count = plan.len / (Py_ssize_t)(PLAN_FIELDS * sizeof(int64_t));
    if (plan.len % (Py_ssize_t)(PLAN_FIELDS * sizeof(int64_t)) || ids.len != count * ID_SIZE ||
        magic.len != 4) {
        PyErr_SetString(PyExc_ValueError, "plan, ids and magic do not agree in size");
        goto done;
    }
    const int64_t *rows = (const int64_t *)plan.buf;
    if (!plan_fits(rows, count, blob.len, out.len)) {
        PyErr_SetString(PyExc_ValueError, "a plan row lies outside its buffers");
        goto done;
    }
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    if (dctx == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t failed;
    Py_BEGIN_ALLOW_THREADS
    failed = decode_all(dctx, blob.buf, rows, count, ids.buf, out.buf, magic.buf, max_raw);
    Py_END_ALLOW_THREADS
    ZSTD_freeDCtx(dctx);
    result = PyLong_FromSsize_t(failed);
done:
    PyBuffer_Release(&blob);
    PyBuffer_Release(&plan);
    PyBuffer_Release(&ids);
    PyBuffer_Release(&out);
    PyBuffer_Release(&magic);
    return result;
}

/* Frame header + payload of one chunk at ``dst`` (room for its bound): zstd when that is
 * smaller, else the raw bytes, as frames.encode; the frame's length. */
static size_t encode_one(ZSTD_CCtx *cctx, const unsigned char *src, size_t n,
                         const unsigned char *id, const unsigned char *magic, unsigned char *dst,
                         size_t room)
{
    size_t stored = ZSTD_compress2(cctx, dst + HEADER_SIZE, room - HEADER_SIZE, src, n);
    unsigned codec = CODEC_ZSTD;
    if (ZSTD_isError(stored) || stored >= n) {
        memcpy(dst + HEADER_SIZE, src, n);
        stored = n;
        codec = CODEC_STORED;
    }
    memcpy(dst, magic, 4);
    dst[4] = FORMAT_VERSION;
    dst[5] = (unsigned char)codec;
    dst[6] = dst[7] = 0;
    put_le32(dst + 8, (uint32_t)n);
    put_le32(dst + 12, (uint32_t)stored);
    memcpy(dst + 16, id, ID_SIZE);
    return HEADER_SIZE + stored;
}

static size_t encode_all(ZSTD_CCtx *cctx, const Py_buffer *chunks, Py_ssize_t count,
                         const unsigned char *ids, const unsigned char *magic, unsigned char *out,
                         int64_t *ends)
{
    size_t at = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        const size_t n = (size_t)chunks[i].len;
        at += encode_one(cctx, chunks[i].buf, n, ids + i * ID_SIZE, magic, out + at,
                         HEADER_SIZE + ZSTD_compressBound(n));
        ends[i] = (int64_t)at;
    }
    return at;
}

static void release_all(Py_buffer *views, Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
}

/* The chunks' buffers, held until release_all; the bytes their frames may need at most. */
static Py_buffer *hold_all(PyObject *seq, Py_ssize_t count, size_t *room)
{
    Py_buffer *views = PyMem_Calloc(count ? (size_t)count : 1, sizeof(Py_buffer));
    if (views == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    *room = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (PyObject_GetBuffer(item, &views[i], PyBUF_SIMPLE) < 0) {
            release_all(views, i);
            return NULL;
        }
        if ((uint64_t)views[i].len > UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "a chunk above 4 GiB has no frame");
            release_all(views, i + 1);
            return NULL;
        }
        *room += HEADER_SIZE + ZSTD_compressBound((size_t)views[i].len);
    }
    return views;
}

static ZSTD_CCtx *new_cctx(int level)
{
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    if (cctx == NULL)
        return NULL;
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1);
    return cctx;
}

static PyObject *encode_held(Py_buffer *views, Py_ssize_t count, size_t room, const char *ids,
                             const char *magic, int level)
{
    PyObject *blob = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)room);
    PyObject *ends = PyBytes_FromStringAndSize(NULL, count * (Py_ssize_t)sizeof(int64_t));
    ZSTD_CCtx *cctx = new_cctx(level);
    if (blob == NULL || ends == NULL || cctx == NULL) {
        Py_XDECREF(blob);
        Py_XDECREF(ends);
        ZSTD_freeCCtx(cctx);
        return cctx == NULL ? PyErr_NoMemory() : NULL;
    }
    size_t used;
    Py_BEGIN_ALLOW_THREADS
    used = encode_all(cctx, views, count, (const unsigned char *)ids,
                      (const unsigned char *)magic, (unsigned char *)PyBytes_AS_STRING(blob),
                      (int64_t *)PyBytes_AS_STRING(ends));
    Py_END_ALLOW_THREADS
    ZSTD_freeCCtx(cctx);
    if (_PyBytes_Resize(&blob, (Py_ssize_t)used) < 0) {
        Py_DECREF(ends);
        return NULL;
    }
    return Py_BuildValue("(NN)", blob, ends);
}

static PyObject *py_encode_frames(PyObject *self, PyObject *args)
{
    PyObject *chunks, *result = NULL;
    Py_buffer ids, magic;
    int level;
    (void)self;
    if (!PyArg_ParseTuple(args, "Oy*iy*", &chunks, &ids, &level, &magic))
        return NULL;
    PyObject *seq = PySequence_Fast(chunks, "chunks must be a sequence");
    if (seq == NULL)
        goto done;
    const Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (ids.len != count * ID_SIZE || magic.len != 4) {
        PyErr_SetString(PyExc_ValueError, "ids and magic do not agree with the chunks");
        goto done;
    }
    size_t room;
    Py_buffer *views = hold_all(seq, count, &room);
    if (views != NULL) {
        result = encode_held(views, count, room, ids.buf, magic.buf, level);
        release_all(views, count);
    }
done:
    Py_XDECREF(seq);
    PyBuffer_Release(&ids);
    PyBuffer_Release(&magic);
    return result;
}

static PyMethodDef methods[] = {
    {"decode_frames", py_decode_frames, METH_VARARGS,
     "decode_frames(blob, plan, ids, out, magic, max_raw) -> index of the first frame that "
     "fails, or -1.\n\nplan holds int64 rows (frame offset in blob, frame length, offset in "
     "out, raw length); ids the 16-byte ids, one per row."},
    {"encode_frames", py_encode_frames, METH_VARARGS,
     "encode_frames(chunks, ids, level, magic) -> (frames, ends).\n\nEach chunk's frame (as "
     "frames.encode makes it), back to back in one bytes; ends holds int64 offsets, the end "
     "of each frame in it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "strata._native_store", "strata's store frame decoder.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native_store(void)
{
    return PyModule_Create(&module);
}
