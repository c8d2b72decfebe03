/*
 * strata._native: the hot loops of strata, with the same signatures as the
 * pure-Python reference in src/strata/_py/kernels.py.
 *
 * Bitmaps returned by changed_sectors / nonzero_blocks are LSB-first
 * (numpy.packbits(bitorder="little")): bit i lives in byte i/8, bit i%8.
 * The GIL is released around every scan so threads can run them in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

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
    Py_BEGIN_ALLOW_THREADS
    zero = buffer_is_zero((const unsigned char *)view.buf, view.len);
    Py_END_ALLOW_THREADS
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
        Py_BEGIN_ALLOW_THREADS
        memset(bits, 0, (size_t)((count + 7) / 8));
        for (Py_ssize_t i = 0; i < count; i++) {
            const Py_ssize_t off = i * sector_size;
            if (memcmp(pa + off, pb + off, (size_t)sector_size))
                bits[i >> 3] |= (unsigned char)(1u << (i & 7));
        }
        Py_END_ALLOW_THREADS
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
        Py_BEGIN_ALLOW_THREADS
        memset(bits, 0, (size_t)((count + 7) / 8));
        for (Py_ssize_t i = 0; i < count; i++) {
            const Py_ssize_t off = i * block_size;
            const Py_ssize_t len = a.len - off < block_size ? a.len - off : block_size;
            if (!buffer_is_zero(p + off, len))
                bits[i >> 3] |= (unsigned char)(1u << (i & 7));
        }
        Py_END_ALLOW_THREADS
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

static PyMethodDef methods[] = {
    {"is_zero", py_is_zero, METH_O, "is_zero(buf) -> True when every byte is zero."},
    {"changed_sectors", py_changed_sectors, METH_VARARGS,
     "changed_sectors(a, b, sector_size) -> LSB-first bitmap, bit i set when sector i differs."},
    {"nonzero_blocks", py_nonzero_blocks, METH_VARARGS,
     "nonzero_blocks(buf, block_size) -> LSB-first bitmap, bit i set when block i holds a non-zero byte."},
    {"bitmap_runs", (PyCFunction)(void (*)(void))py_bitmap_runs, METH_VARARGS | METH_KEYWORDS,
     "bitmap_runs(bitmap, msb_first, nbits=-1) -> [(start, length)] runs of set bits."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "strata._native", "strata's C kernels.", -1, methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    return PyModule_Create(&module);
}
