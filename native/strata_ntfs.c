/*
 * strata._ntfs: NTFS volumes edited in process through libntfs-3g (GPL-2.0-or-later).
 *
 * A Volume mounts the NTFS file system held by a Python object that reads and writes bytes
 * (a strata BlockDevice: ``size``, ``readinto(offset, buffer)``, ``write(offset, data)``),
 * so the publish merge edits a copy-on-write overlay of the stored OS layer and never a
 * file of its own.  libntfs-3g is not thread-safe, and its device callbacks call back into
 * Python: the GIL is held throughout.
 *
 * Names are UTF-16LE bytes, as NTFS stores them (libntfs-3g's multibyte path functions go
 * through the C locale); files are addressed by MFT record number.  A failure raises
 * OSError with libntfs-3g's errno and the last message it logged.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <ntfs-3g/types.h>
#include <ntfs-3g/attrib.h>
#include <ntfs-3g/cache.h>
#include <ntfs-3g/device.h>
#include <ntfs-3g/dir.h>
#include <ntfs-3g/inode.h>
#include <ntfs-3g/logging.h>
#include <ntfs-3g/reparse.h>
#include <ntfs-3g/security.h>
#include <ntfs-3g/volume.h>

/* ------------------------------------------------------------------ logging */

/* The last error libntfs-3g logged, for the exception: its errno alone ("Input/output
 * error") does not say which structure it refused. */
static char last_message[512];

static int record_message(const char *function, const char *file, int line, u32 level,
                          void *data, const char *format, va_list args)
{
    (void)function, (void)file, (void)line, (void)data;
    if (level & (NTFS_LOG_LEVEL_ERROR | NTFS_LOG_LEVEL_PERROR | NTFS_LOG_LEVEL_CRITICAL)) {
        int n = vsnprintf(last_message, sizeof last_message, format, args);
        while (n > 0 && (size_t)n < sizeof last_message && last_message[n - 1] == '\n')
            last_message[--n] = '\0';
    }
    return 0;
}

/* ------------------------------------------------------------------ device */

typedef struct {
    PyObject *device;   /* the Python object read and written */
    long long size;     /* its size in bytes */
    long long position; /* for the sequential read/write/seek operations */
    PyObject *failure;  /* the exception a callback raised, re-raised after the call */
} device_state;

static void keep_failure(device_state *st)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback && value)
        PyException_SetTraceback(value, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    if (st->failure == NULL)
        st->failure = value; /* the first failure is the cause; later ones follow from it */
    else
        Py_XDECREF(value);
}

static s64 call_device(struct ntfs_device *dev, const char *method, void *buf, s64 count,
                       s64 offset, int writable)
{
    device_state *st = dev->d_private;
    if (offset < 0 || count < 0) {
        errno = EINVAL;
        return -1;
    }
    if (offset >= st->size)
        return 0;
    if (count > st->size - offset)
        count = st->size - offset;
    if (count == 0)
        return 0;
    /* libntfs-3g may write back while an error is already being raised (an inode closed
     * after a failed call): set it aside, so Python is never entered with it pending. */
    PyObject *pending_type, *pending_value, *pending_traceback;
    PyErr_Fetch(&pending_type, &pending_value, &pending_traceback);
    PyObject *view = PyMemoryView_FromMemory(buf, (Py_ssize_t)count,
                                             writable ? PyBUF_WRITE : PyBUF_READ);
    PyObject *result = view ? PyObject_CallMethod(st->device, method, "LO", (long long)offset,
                                                  view)
                            : NULL;
    if (result == NULL)
        keep_failure(st);
    Py_XDECREF(result);
    if (view) {
        /* the buffer is libntfs-3g's: no view of it may outlive the call */
        PyObject *released = PyObject_CallMethod(view, "release", NULL);
        if (released == NULL) { /* a view the device kept: its failure, and ours */
            keep_failure(st);
            result = NULL;
        }
        Py_XDECREF(released);
        Py_DECREF(view);
    }
    PyErr_Restore(pending_type, pending_value, pending_traceback);
    if (result == NULL) {
        errno = EIO;
        return -1;
    }
    return count;
}

static int dev_open(struct ntfs_device *dev, int flags)
{
    if (NDevOpen(dev)) {
        errno = EBUSY;
        return -1;
    }
    if ((flags & O_RDWR) != O_RDWR)
        NDevSetReadOnly(dev);
    NDevSetOpen(dev);
    return 0;
}

static int dev_close(struct ntfs_device *dev)
{
    NDevClearOpen(dev);
    return 0;
}

static s64 dev_seek(struct ntfs_device *dev, s64 offset, int whence)
{
    device_state *st = dev->d_private;
    s64 base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? st->position : st->size;
    if (whence != SEEK_SET && whence != SEEK_CUR && whence != SEEK_END) {
        errno = EINVAL;
        return -1;
    }
    if (base + offset < 0) {
        errno = EINVAL;
        return -1;
    }
    st->position = base + offset;
    return st->position;
}

static s64 dev_pread(struct ntfs_device *dev, void *buf, s64 count, s64 offset)
{
    return call_device(dev, "readinto", buf, count, offset, 1);
}

static s64 dev_pwrite(struct ntfs_device *dev, const void *buf, s64 count, s64 offset)
{
    if (NDevReadOnly(dev)) {
        errno = EROFS;
        return -1;
    }
    NDevSetDirty(dev);
    return call_device(dev, "write", (void *)buf, count, offset, 0);
}

static s64 dev_read(struct ntfs_device *dev, void *buf, s64 count)
{
    device_state *st = dev->d_private;
    s64 got = dev_pread(dev, buf, count, st->position);
    if (got > 0)
        st->position += got;
    return got;
}

static s64 dev_write(struct ntfs_device *dev, const void *buf, s64 count)
{
    device_state *st = dev->d_private;
    s64 put = dev_pwrite(dev, buf, count, st->position);
    if (put > 0)
        st->position += put;
    return put;
}

static int dev_sync(struct ntfs_device *dev)
{
    NDevClearDirty(dev);
    return 0; /* the device's owner makes it durable (the merge stores what it wrote) */
}

static int dev_stat(struct ntfs_device *dev, struct stat *buf)
{
    device_state *st = dev->d_private;
    memset(buf, 0, sizeof *buf);
    buf->st_mode = S_IFREG;
    buf->st_size = st->size;
    return 0;
}

static int dev_ioctl(struct ntfs_device *dev, unsigned long request, void *argp)
{
    (void)dev, (void)request, (void)argp;
    errno = ENOTTY;
    return -1;
}

static struct ntfs_device_operations device_operations = {
    .open = dev_open,
    .close = dev_close,
    .seek = dev_seek,
    .read = dev_read,
    .write = dev_write,
    .pread = dev_pread,
    .pwrite = dev_pwrite,
    .sync = dev_sync,
    .stat = dev_stat,
    .ioctl = dev_ioctl,
};

/* ------------------------------------------------------------------ Volume */

typedef struct {
    PyObject_HEAD
    ntfs_volume *vol;
    device_state state;
} Volume;

/* The exception for a failed libntfs-3g call: a callback's own exception when there was
 * one (the device could not be read or written), else OSError(errno, what: message). */
static PyObject *failed(Volume *self, const char *what)
{
    if (self->state.failure) {
        PyObject *failure = self->state.failure;
        self->state.failure = NULL;
        PyErr_SetObject((PyObject *)Py_TYPE(failure), failure);
        Py_DECREF(failure);
        return NULL;
    }
    int err = errno ? errno : EIO;
    PyObject *args = last_message[0]
                         ? Py_BuildValue("(is)", err, last_message)
                         : Py_BuildValue("(is)", err, strerror(err));
    last_message[0] = '\0';
    if (args) {
        PyObject *exc = PyObject_Call(PyExc_OSError, args, NULL);
        Py_DECREF(args);
        if (exc) {
            PyObject *note = PyUnicode_FromString(what);
            if (note) {
                PyObject_SetAttrString(exc, "operation", note);
                Py_DECREF(note);
            }
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
    }
    return NULL;
}

static int mounted(Volume *self)
{
    if (self->vol)
        return 1;
    PyErr_SetString(PyExc_ValueError, "the volume is closed");
    return 0;
}

static void begin(Volume *self)
{
    errno = 0;
    last_message[0] = '\0';
    Py_CLEAR(self->state.failure);
}

static int Volume_init(Volume *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"device", "read_only", NULL};
    PyObject *device;
    int read_only = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|p", keywords, &device, &read_only))
        return -1;
    if (self->vol) {
        PyErr_SetString(PyExc_ValueError, "the volume is already mounted");
        return -1;
    }
    PyObject *size = PyObject_GetAttrString(device, "size");
    if (!size)
        return -1;
    self->state.size = PyLong_AsLongLong(size);
    Py_DECREF(size);
    if (self->state.size == -1 && PyErr_Occurred())
        return -1;
    Py_INCREF(device);
    Py_XSETREF(self->state.device, device);
    self->state.position = 0;
    begin(self);
    struct ntfs_device *dev = ntfs_device_alloc("strata", 0, &device_operations, &self->state);
    if (!dev) {
        failed(self, "allocate the device");
        return -1;
    }
    /* As ntfs-3g mounts by default: an unclean journal is reset (recover); a hibernated
     * volume is refused (EPERM). */
    self->vol = ntfs_device_mount(dev, read_only ? NTFS_MNT_RDONLY : NTFS_MNT_RECOVER);
    if (!self->vol) {
        ntfs_device_free(dev);
        failed(self, "mount");
        return -1;
    }
    /* As ntfs_mount does after ntfs_device_mount.  Not only faster: without the lookup cache,
     * libntfs-3g looks a system file up by its upper-cased name, which misses $Extend's
     * POSIX-namespace $Reparse, and setting a reparse point then fails with EINVAL. */
    ntfs_create_lru_caches(self->vol);
    return 0;
}

static PyObject *Volume_close(Volume *self, PyObject *unused)
{
    (void)unused;
    if (!self->vol)
        Py_RETURN_NONE;
    begin(self);
    ntfs_volume *vol = self->vol;
    self->vol = NULL;
    if (ntfs_umount(vol, FALSE)) /* writes back what is cached, then frees the device */
        return failed(self, "unmount");
    if (self->state.failure)
        return failed(self, "unmount");
    Py_RETURN_NONE;
}

static void Volume_dealloc(Volume *self)
{
    if (self->vol) {
        ntfs_umount(self->vol, TRUE);
        self->vol = NULL;
    }
    Py_CLEAR(self->state.device);
    Py_CLEAR(self->state.failure);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A UTF-16LE name as libntfs-3g takes it: 1-255 units. */
static int name_units(Py_buffer *name, const char *what)
{
    if (name->len == 0 || name->len % 2 || name->len / 2 > 255) {
        PyErr_Format(PyExc_ValueError, "%s must be 1-255 UTF-16LE units, not %zd bytes", what,
                     name->len);
        return -1;
    }
    return (int)(name->len / 2);
}

static ntfs_inode *open_inode(Volume *self, unsigned long long inode)
{
    ntfs_inode *ni = ntfs_inode_open(self->vol, (MFT_REF)inode);
    if (!ni)
        failed(self, "open the inode");
    return ni;
}

/* ntfs_inode_close of ``a`` and of ``b`` (when given), raising when either cannot be written
 * back or a device callback failed; -1 then. */
static int close_inodes(Volume *self, ntfs_inode *a, ntfs_inode *b, const char *what)
{
    int bad = ntfs_inode_close(a);
    int err = errno;
    if (b && ntfs_inode_close(b) && !bad) {
        bad = 1;
        err = errno;
    }
    if (bad || self->state.failure) {
        errno = err;
        failed(self, what);
        return -1;
    }
    return 0;
}

/* An inode and a directory, both open, or -1 (the failure raised, neither left open). */
static int open_pair(Volume *self, unsigned long long inode, unsigned long long dir,
                     ntfs_inode **ni, ntfs_inode **dir_ni)
{
    *ni = open_inode(self, inode);
    if (!*ni)
        return -1;
    *dir_ni = open_inode(self, dir);
    if (!*dir_ni) {
        ntfs_inode_close(*ni);
        return -1;
    }
    return 0;
}

static PyObject *Volume_lookup(Volume *self, PyObject *args)
{
    unsigned long long dir;
    Py_buffer name;
    if (!mounted(self) || !PyArg_ParseTuple(args, "Ky*", &dir, &name))
        return NULL;
    PyObject *result = NULL;
    int units = name_units(&name, "a name");
    if (units < 0)
        goto done;
    begin(self);
    ntfs_inode *dir_ni = open_inode(self, dir);
    if (!dir_ni)
        goto done;
    u64 ref = ntfs_inode_lookup_by_name(dir_ni, (const ntfschar *)name.buf, units);
    int err = errno;
    if (close_inodes(self, dir_ni, NULL, "close the directory") < 0)
        goto done;
    if (ref == (u64)-1) {
        if (err == ENOENT && !self->state.failure) {
            result = Py_None;
            Py_INCREF(result);
        } else {
            errno = err;
            failed(self, "look the name up");
        }
        goto done;
    }
    result = PyLong_FromUnsignedLongLong(MREF(ref));
done:
    PyBuffer_Release(&name);
    return result;
}

static PyObject *Volume_create(Volume *self, PyObject *args)
{
    unsigned long long dir;
    Py_buffer name;
    int directory;
    if (!mounted(self) || !PyArg_ParseTuple(args, "Ky*p", &dir, &name, &directory))
        return NULL;
    PyObject *result = NULL;
    int units = name_units(&name, "a name");
    if (units < 0)
        goto done;
    begin(self);
    ntfs_inode *dir_ni = open_inode(self, dir);
    if (!dir_ni)
        goto done;
    ntfs_inode *ni = ntfs_create(dir_ni, const_cpu_to_le32(0), (const ntfschar *)name.buf,
                                 (u8)units, directory ? S_IFDIR : S_IFREG);
    if (!ni) {
        failed(self, "create");
        ntfs_inode_close(dir_ni);
        goto done;
    }
    unsigned long long number = ni->mft_no;
    if (close_inodes(self, ni, dir_ni, "close the new inode and its directory") == 0)
        result = PyLong_FromUnsignedLongLong(number);
done:
    PyBuffer_Release(&name);
    return result;
}

/* Another name for ``inode`` in ``dir`` (a hard link), or, ``removing``, that name taken
 * away (the file goes with its last name; a directory must be empty). */
static PyObject *change_name(Volume *self, unsigned long long inode, unsigned long long dir,
                             Py_buffer *name, int removing)
{
    int units = name_units(name, "a name");
    if (units < 0)
        return NULL;
    begin(self);
    ntfs_inode *ni, *dir_ni;
    if (open_pair(self, inode, dir, &ni, &dir_ni) < 0)
        return NULL;
    const ntfschar *uname = name->buf;
    if (removing) { /* ntfs_delete closes both inodes, whatever it returns */
        if (ntfs_delete(self->vol, NULL, ni, dir_ni, uname, (u8)units) || self->state.failure)
            return failed(self, "delete");
        Py_RETURN_NONE;
    }
    if (ntfs_link(ni, dir_ni, uname, (u8)units) || self->state.failure) {
        failed(self, "link");
        ntfs_inode_close(ni);
        ntfs_inode_close(dir_ni);
        return NULL;
    }
    if (close_inodes(self, ni, dir_ni, "close the inode and the directory") < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Volume_link(Volume *self, PyObject *args)
{
    unsigned long long inode, dir;
    Py_buffer name;
    if (!mounted(self) || !PyArg_ParseTuple(args, "KKy*", &inode, &dir, &name))
        return NULL;
    PyObject *result = change_name(self, inode, dir, &name, 0);
    PyBuffer_Release(&name);
    return result;
}

static PyObject *Volume_unlink(Volume *self, PyObject *args)
{
    unsigned long long dir, inode;
    Py_buffer name;
    if (!mounted(self) || !PyArg_ParseTuple(args, "KKy*", &dir, &inode, &name))
        return NULL;
    PyObject *result = change_name(self, inode, dir, &name, 1);
    PyBuffer_Release(&name);
    return result;
}

typedef struct {
    PyObject *list;
    int failed;
} listing;

static int add_child(void *dirent, const ntfschar *name, const int name_len, const int name_type,
                     const s64 pos, const MFT_REF mref, const unsigned dt_type)
{
    (void)pos;
    listing *out = dirent;
    if (name_type == FILE_NAME_DOS) /* the 8.3 alias of a name listed under its own */
        return 0;
    if ((name_len == 1 && le16_to_cpu(name[0]) == '.') ||
        (name_len == 2 && le16_to_cpu(name[0]) == '.' && le16_to_cpu(name[1]) == '.'))
        return 0;
    PyObject *row = Py_BuildValue("(y#KO)", (const char *)name, (Py_ssize_t)name_len * 2,
                                  (unsigned long long)MREF(mref),
                                  dt_type == NTFS_DT_DIR ? Py_True : Py_False);
    if (!row || PyList_Append(out->list, row) < 0) {
        Py_XDECREF(row);
        out->failed = 1;
        return -1;
    }
    Py_DECREF(row);
    return 0;
}

static PyObject *Volume_children(Volume *self, PyObject *args)
{
    unsigned long long dir;
    if (!mounted(self) || !PyArg_ParseTuple(args, "K", &dir))
        return NULL;
    begin(self);
    ntfs_inode *dir_ni = open_inode(self, dir);
    if (!dir_ni)
        return NULL;
    listing out = {PyList_New(0), 0};
    s64 pos = 0;
    int res = out.list ? ntfs_readdir(dir_ni, &pos, &out, add_child) : -1;
    int err = errno;
    if (out.failed || !out.list) {
        ntfs_inode_close(dir_ni);
        Py_XDECREF(out.list);
        return NULL;
    }
    if (res) {
        errno = err;
        failed(self, "list the directory");
        ntfs_inode_close(dir_ni);
        Py_DECREF(out.list);
        return NULL;
    }
    if (close_inodes(self, dir_ni, NULL, "close the directory") < 0) {
        Py_DECREF(out.list);
        return NULL;
    }
    return out.list;
}

/* The $DATA attribute named ``stream`` (b"" the unnamed one) of an open inode. */
static ntfs_attr *open_stream(Volume *self, ntfs_inode *ni, Py_buffer *stream, int create)
{
    ntfschar *name = stream->len ? (ntfschar *)stream->buf : AT_UNNAMED;
    u32 units = (u32)(stream->len / 2);
    if (create && units && !ntfs_attr_exist(ni, AT_DATA, name, units) &&
        ntfs_attr_add(ni, AT_DATA, name, (u8)units, NULL, 0)) {
        failed(self, "add the stream");
        return NULL;
    }
    ntfs_attr *na = ntfs_attr_open(ni, AT_DATA, name, units);
    if (!na)
        failed(self, "open the stream");
    return na;
}

static int stream_name_ok(Py_buffer *stream)
{
    if (stream->len % 2 || stream->len / 2 > 255) {
        PyErr_Format(PyExc_ValueError, "a stream name must be 0-255 UTF-16LE units, not %zd bytes",
                     stream->len);
        return 0;
    }
    return 1;
}

/* An operation on one open $DATA stream: 0, or -1 with the failure raised. */
typedef int (*stream_op)(Volume *self, ntfs_attr *na, void *arg);

/* ``op`` on the stream of ``inode`` (made first when ``create``), inode and stream closed
 * after it; 0, or -1 with the failure raised. */
static int on_stream(Volume *self, unsigned long long inode, Py_buffer *stream, int create,
                     stream_op op, void *arg)
{
    begin(self);
    ntfs_inode *ni = open_inode(self, inode);
    if (!ni)
        return -1;
    ntfs_attr *na = open_stream(self, ni, stream, create);
    int bad = na == NULL || op(self, na, arg) < 0;
    if (na)
        ntfs_attr_close(na);
    if (bad) {
        ntfs_inode_close(ni);
        return -1;
    }
    return close_inodes(self, ni, NULL, "close the inode");
}

/* A failed pread/pwrite of ``got`` bytes (0: nothing moved, no errno set). */
static int moved_nothing(Volume *self, s64 got, const char *what)
{
    if (got == 0)
        errno = EIO;
    failed(self, what);
    return -1;
}

typedef struct {
    const char *data;
    s64 left, at;
} write_args;

static int write_op(Volume *self, ntfs_attr *na, void *arg)
{
    write_args *w = arg;
    /* ntfs_attr_pwrite may write less than asked (a run boundary): go on until done */
    while (w->left > 0) {
        s64 put = ntfs_attr_pwrite(na, w->at, w->left, w->data);
        if (put <= 0 || self->state.failure)
            return moved_nothing(self, put, "write");
        w->data += put;
        w->at += put;
        w->left -= put;
    }
    return 0;
}

typedef struct {
    s64 offset;
    Py_ssize_t size;
    PyObject *bytes;
} read_args;

static int read_op(Volume *self, ntfs_attr *na, void *arg)
{
    read_args *r = arg;
    Py_ssize_t size = r->offset >= na->data_size ? 0
                      : r->size > na->data_size - r->offset
                          ? (Py_ssize_t)(na->data_size - r->offset)
                          : r->size;
    r->bytes = PyBytes_FromStringAndSize(NULL, size);
    if (!r->bytes)
        return -1;
    for (s64 got = 0; got < size;) {
        s64 n = ntfs_attr_pread(na, r->offset + got, size - got, PyBytes_AS_STRING(r->bytes) + got);
        if (n <= 0 || self->state.failure) {
            Py_CLEAR(r->bytes);
            return moved_nothing(self, n, "read");
        }
        got += n;
    }
    return 0;
}

static int truncate_op(Volume *self, ntfs_attr *na, void *arg)
{
    if (ntfs_attr_truncate(na, *(s64 *)arg) || self->state.failure) {
        failed(self, "truncate");
        return -1;
    }
    return 0;
}

/* The stream name and the offset and size arguments of a stream call, checked. */
static int stream_args_ok(Py_buffer *stream, long long offset, long long size)
{
    if (!stream_name_ok(stream))
        return 0;
    if (offset < 0 || size < 0) {
        PyErr_SetString(PyExc_ValueError, "a negative offset or size");
        return 0;
    }
    return 1;
}

static PyObject *Volume_write(Volume *self, PyObject *args)
{
    unsigned long long inode;
    long long offset;
    Py_buffer stream, data;
    if (!mounted(self) || !PyArg_ParseTuple(args, "Ky*Ly*", &inode, &stream, &offset, &data))
        return NULL;
    write_args w = {data.buf, data.len, offset};
    int ok = stream_args_ok(&stream, offset, 0) &&
             on_stream(self, inode, &stream, 1, write_op, &w) == 0;
    PyBuffer_Release(&stream);
    PyBuffer_Release(&data);
    return ok ? Py_NewRef(Py_None) : NULL;
}

static PyObject *Volume_read(Volume *self, PyObject *args)
{
    unsigned long long inode;
    read_args r = {0, 0, NULL};
    Py_buffer stream;
    if (!mounted(self) || !PyArg_ParseTuple(args, "Ky*Ln", &inode, &stream, &r.offset, &r.size))
        return NULL;
    int ok = stream_args_ok(&stream, r.offset, r.size) &&
             on_stream(self, inode, &stream, 0, read_op, &r) == 0;
    PyBuffer_Release(&stream);
    if (!ok)
        Py_CLEAR(r.bytes);
    return r.bytes;
}

static PyObject *Volume_truncate(Volume *self, PyObject *args)
{
    unsigned long long inode;
    long long size;
    Py_buffer stream;
    if (!mounted(self) || !PyArg_ParseTuple(args, "Ky*L", &inode, &stream, &size))
        return NULL;
    s64 to = size;
    int ok = stream_args_ok(&stream, 0, size) &&
             on_stream(self, inode, &stream, 1, truncate_op, &to) == 0;
    PyBuffer_Release(&stream);
    return ok ? Py_NewRef(Py_None) : NULL;
}

/* One of libntfs-3g's "system.ntfs_*" setters on an inode. */
typedef int (*value_setter)(Volume *self, ntfs_inode *ni, const char *value, size_t size);

static PyObject *set_value(Volume *self, unsigned long long inode, const char *value,
                           size_t size, value_setter set, const char *what)
{
    begin(self);
    ntfs_inode *ni = open_inode(self, inode);
    if (!ni)
        return NULL;
    if (set(self, ni, value, size) || self->state.failure) {
        failed(self, what);
        ntfs_inode_close(ni);
        return NULL;
    }
    if (close_inodes(self, ni, NULL, "close the inode") < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int set_times(Volume *self, ntfs_inode *ni, const char *value, size_t size)
{
    (void)self;
    return ntfs_inode_set_times(ni, value, size, 0);
}

static int set_attributes(Volume *self, ntfs_inode *ni, const char *value, size_t size)
{
    (void)self;
    return ntfs_set_ntfs_attrib(ni, value, size, 0);
}

static int set_security(Volume *self, ntfs_inode *ni, const char *value, size_t size)
{
    struct SECURITY_CONTEXT context;
    memset(&context, 0, sizeof context);
    context.vol = self->vol;
    return ntfs_set_ntfs_acl(&context, ni, value, size, 0);
}

static int set_reparse(Volume *self, ntfs_inode *ni, const char *value, size_t size)
{
    (void)self;
    return size ? ntfs_set_ntfs_reparse_data(ni, value, size, 0)
                : ntfs_remove_ntfs_reparse_data(ni);
}

static PyObject *Volume_set_times(Volume *self, PyObject *args)
{
    unsigned long long inode;
    long long times[3]; /* created, modified, accessed: FILETIME, 100 ns since 1601 */
    if (!mounted(self) ||
        !PyArg_ParseTuple(args, "KLLL", &inode, &times[0], &times[1], &times[2]))
        return NULL;
    le64 value[3];
    for (int i = 0; i < 3; i++)
        value[i] = cpu_to_sle64(times[i]);
    return set_value(self, inode, (const char *)value, sizeof value, set_times, "set times");
}

static PyObject *Volume_set_attributes(Volume *self, PyObject *args)
{
    unsigned long long inode;
    unsigned int flags;
    if (!mounted(self) || !PyArg_ParseTuple(args, "KI", &inode, &flags))
        return NULL;
    le32 value = cpu_to_le32(flags);
    return set_value(self, inode, (const char *)&value, sizeof value, set_attributes,
                     "set attributes");
}

static PyObject *set_bytes(Volume *self, PyObject *args, value_setter set, const char *what)
{
    unsigned long long inode;
    Py_buffer value;
    if (!mounted(self) || !PyArg_ParseTuple(args, "Ky*", &inode, &value))
        return NULL;
    PyObject *result = set_value(self, inode, value.buf, (size_t)value.len, set, what);
    PyBuffer_Release(&value);
    return result;
}

static PyObject *Volume_set_security(Volume *self, PyObject *args)
{
    return set_bytes(self, args, set_security, "set the security descriptor");
}

static PyObject *Volume_set_reparse(Volume *self, PyObject *args)
{
    return set_bytes(self, args, set_reparse, "set the reparse point");
}

static PyObject *Volume_is_directory(Volume *self, PyObject *args)
{
    unsigned long long inode;
    if (!mounted(self) || !PyArg_ParseTuple(args, "K", &inode))
        return NULL;
    begin(self);
    ntfs_inode *ni = open_inode(self, inode);
    if (!ni)
        return NULL;
    int directory = (ni->mrec->flags & MFT_RECORD_IS_DIRECTORY) != 0;
    if (close_inodes(self, ni, NULL, "close the inode") < 0)
        return NULL;
    return PyBool_FromLong(directory);
}

static PyObject *Volume_enter(Volume *self, PyObject *unused)
{
    (void)unused;
    return Py_NewRef((PyObject *)self);
}

static PyObject *Volume_exit(Volume *self, PyObject *args)
{
    (void)args;
    PyObject *closed = Volume_close(self, NULL);
    if (!closed)
        return NULL;
    Py_DECREF(closed);
    Py_RETURN_FALSE;
}

static PyMethodDef Volume_methods[] = {
    {"close", (PyCFunction)Volume_close, METH_NOARGS,
     "close() -> None: write back what libntfs-3g caches, unmount."},
    {"lookup", (PyCFunction)Volume_lookup, METH_VARARGS,
     "lookup(dir, name) -> record number of ``name`` (UTF-16LE) in ``dir``, or None."},
    {"create", (PyCFunction)Volume_create, METH_VARARGS,
     "create(dir, name, directory) -> record number of a new file or directory."},
    {"link", (PyCFunction)Volume_link, METH_VARARGS,
     "link(inode, dir, name) -> None: another name (a hard link) for ``inode``."},
    {"unlink", (PyCFunction)Volume_unlink, METH_VARARGS,
     "unlink(dir, inode, name) -> None: remove the name; the file goes with its last name "
     "(a directory must be empty)."},
    {"children", (PyCFunction)Volume_children, METH_VARARGS,
     "children(dir) -> [(name, inode, is_directory)], without '.', '..' and 8.3 aliases."},
    {"write", (PyCFunction)Volume_write, METH_VARARGS,
     "write(inode, stream, offset, data) -> None (stream b'' the unnamed $DATA; a named one "
     "is created when missing)."},
    {"read", (PyCFunction)Volume_read, METH_VARARGS,
     "read(inode, stream, offset, size) -> bytes (fewer past the stream's end)."},
    {"truncate", (PyCFunction)Volume_truncate, METH_VARARGS,
     "truncate(inode, stream, size) -> None."},
    {"set_times", (PyCFunction)Volume_set_times, METH_VARARGS,
     "set_times(inode, created, modified, accessed) -> None (FILETIME; the MFT-change time "
     "becomes now)."},
    {"set_attributes", (PyCFunction)Volume_set_attributes, METH_VARARGS,
     "set_attributes(inode, flags) -> None: FILE_ATTRIBUTE_* flags."},
    {"set_security", (PyCFunction)Volume_set_security, METH_VARARGS,
     "set_security(inode, descriptor) -> None: a self-relative security descriptor."},
    {"set_reparse", (PyCFunction)Volume_set_reparse, METH_VARARGS,
     "set_reparse(inode, data) -> None: the whole $REPARSE_POINT value (b'' removes it)."},
    {"is_directory", (PyCFunction)Volume_is_directory, METH_VARARGS,
     "is_directory(inode) -> bool."},
    {"__enter__", (PyCFunction)Volume_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Volume_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject VolumeType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "strata._ntfs.Volume",
    .tp_basicsize = sizeof(Volume),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Volume(device, read_only=False): an NTFS volume mounted through libntfs-3g.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Volume_init,
    .tp_dealloc = (destructor)Volume_dealloc,
    .tp_methods = Volume_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "strata._ntfs", "NTFS volumes edited through libntfs-3g.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ntfs(void)
{
    if (PyType_Ready(&VolumeType) < 0)
        return NULL;
    if (getenv("STRATA_NTFS_DEBUG")) { /* everything libntfs-3g says, on stderr */
        ntfs_log_set_handler(ntfs_log_handler_stderr);
        ntfs_log_set_levels(0xFFFFFFFFu);
    } else {
        ntfs_log_set_handler(record_message);
        ntfs_log_set_levels(NTFS_LOG_LEVEL_ERROR | NTFS_LOG_LEVEL_PERROR |
                            NTFS_LOG_LEVEL_CRITICAL);
    }
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&VolumeType);
    if (PyModule_AddObject(m, "Volume", (PyObject *)&VolumeType) < 0) {
        Py_DECREF(&VolumeType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "ROOT", FILE_root);
    return m;
}
