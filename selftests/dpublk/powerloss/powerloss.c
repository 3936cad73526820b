// SPDX-License-Identifier: GPL-2.0
/*
 * powerloss: the guest side of the power-loss campaign
 * (scripts/crash-campaign.sh, Documentation/testing.rst).
 *
 *   powerloss write DEV LOG SEED [--threads N] [--kill-after-ms MS]
 *                   [--ctl DIR] [--max-seconds S] [--span BYTES] [--zero-first 1]
 *   powerloss check DEV LOG SEED
 *
 * write: several threads write to DEV (O_DIRECT; some O_DSYNC, i.e. FUA),
 * zero ranges (BLKZEROOUT) and fdatasync it, in a seeded random mix
 * (flushes 0.2-2 % of operations, O_DSYNC 0-2 % of writes, zeroes 8 %). Every
 * write's data follows from (SEED, write id, sector), so a sector read back
 * later tells which write put it there. Before an I/O is submitted its
 * intent goes to LOG; once it completes, its acknowledgement does; a flush
 * is logged when it starts and when it completes. LOG lives on the host
 * (9p, uncached: each line reaches the host before the I/O is issued), so
 * it survives the power cut. After MS milliseconds the program drops a
 * 'dpuemu-crash' request into DIR (the host agent's control directory):
 * the host cuts dpuemu's power, QEMU dies with it, and this program with
 * the VM. If it is still alive S seconds later (QEMU does not always go
 * down with its vfio-user server) it exits with status 3.
 *
 * --span limits the workload to the first BYTES of DEV; --zero-first 1
 * zeroes them (BLKZEROOUT + fdatasync) first, for a device that was used.
 *
 * check (after a new boot over the same SSD images): reads the logged span
 * of DEV and asserts, per 512-byte sector:
 *   - a write covered by a completed flush (acknowledged before a flush
 *     that completed started, or acknowledged as O_DSYNC) is there, or a
 *     write to that sector that is not older than it (not acknowledged
 *     before it was issued);
 *   - nothing else: every sector holds its initial content (zeroes) or the
 *     sector of some intended write to it.
 * It prints the counts and every bad sector (the first 20 in detail) and
 * exits 1 on any failure.
 *
 * Log lines (one write(2) each, under one lock, so file order is event
 * order):
 *   H seed=S threads=N span=BYTES ... header (and the mix)
 *   I wid sector nsectors kind key fua  intent (kind R random, P duplicate-
 *                                       prone, Z zeroes; key for P)
 *   A wid / E wid errno               acknowledged / failed
 *   F fid / D fid / X fid errno       flush started / completed / failed
 *   K ms                              power cut requested
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SECTOR 512u
#define BLOCK 4096u
#define SECTORS_PER_BLOCK (BLOCK / SECTOR)
#define MAX_BLOCKS_PER_WRITE 16u
#define MAGIC_RANDOM 0x504c5752u /* "PLWR" */
#define MAGIC_DUP 0x504c5750u /* "PLWP" */
#define DUP_KEYS 8u

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "powerloss: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(2);
}

/* SplitMix64: the one generator of data, offsets and choices. */
static uint64_t mix64(uint64_t z)
{
	z += 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

struct rng {
	uint64_t state;
};

static uint64_t rng_next(struct rng *r)
{
	r->state += 0x9e3779b97f4a7c15ull;
	return mix64(r->state);
}

static uint64_t rng_below(struct rng *r, uint64_t n)
{
	return rng_next(r) % n;
}

/*
 * The content of one sector of a write. R: a header naming the write and
 * the sector, then random bytes, then a compressible tail. P: the same for
 * one of DUP_KEYS keys and the sector's place in its 4 KiB block only, so
 * equal keys make equal blocks (dedup shares them). Z: zeroes.
 */
struct sector_header {
	uint32_t magic;
	uint32_t id; /* write id (R) or key (P) */
	uint64_t sector; /* sector (R) or place in the block (P) */
	uint64_t seed;
};

static void fill_sector(uint64_t seed, char kind, uint32_t wid, uint32_t key, uint64_t sector,
			uint8_t *out)
{
	struct sector_header h;
	uint64_t state, word;
	size_t i;

	if (kind == 'Z') {
		memset(out, 0, SECTOR);
		return;
	}
	if (kind == 'P') {
		h.magic = MAGIC_DUP;
		h.id = key;
		h.sector = sector % SECTORS_PER_BLOCK;
	} else {
		h.magic = MAGIC_RANDOM;
		h.id = wid;
		h.sector = sector;
	}
	h.seed = seed;
	memcpy(out, &h, sizeof(h));
	state = mix64(seed ^ mix64(((uint64_t)h.magic << 32 | h.id) ^ mix64(h.sector)));
	for (i = sizeof(h); i < 256; i += 8) {
		word = mix64(state + i);
		memcpy(out + i, &word, 8);
	}
	memset(out + 256, (int)(0x41 + h.id % 26), SECTOR - 256);
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t device_bytes(int fd)
{
	uint64_t bytes;
	struct stat st;

	if (fstat(fd, &st) < 0)
		die("fstat: %s", strerror(errno));
	if (S_ISBLK(st.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, &bytes) < 0)
			die("BLKGETSIZE64: %s", strerror(errno));
		return bytes;
	}
	return (uint64_t)st.st_size;
}

/* ---------------------------------------------------------------- write */

struct workload {
	int fd;
	int dsync_fd;
	int log_fd;
	bool is_blockdev;
	uint64_t seed;
	uint64_t span_blocks;
	pthread_mutex_t log_lock;
	atomic_uint next_wid;
	atomic_uint next_fid;
	atomic_bool stop;
	atomic_ulong writes, flushes, errors;
	/* The mix, per mille of operations (flush) and of writes (O_DSYNC). */
	unsigned int flush_permille, dsync_permille;
};

/* Appends one line to the log; the program cannot go on without it. */
static void log_line(struct workload *w, const char *fmt, ...)
{
	char line[160];
	va_list ap;
	ssize_t n;
	int len;

	va_start(ap, fmt);
	len = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (len < 0 || (size_t)len >= sizeof(line))
		die("log line too long");
	pthread_mutex_lock(&w->log_lock);
	n = write(w->log_fd, line, (size_t)len);
	pthread_mutex_unlock(&w->log_lock);
	if (n != len)
		die("log write: %s", n < 0 ? strerror(errno) : "short");
}

struct writer {
	struct workload *w;
	pthread_t thread;
	unsigned int index;
};

static void do_write(struct workload *w, struct rng *r, uint8_t *buf)
{
	uint64_t block, blocks, sector, nsect, i, range[2];
	unsigned int roll = (unsigned int)rng_below(r, 100);
	uint32_t key = 0, wid;
	bool fua = false;
	char kind = 'R';
	ssize_t done;
	int err = 0;

	/* Half the writes go to a small hot zone, so versions pile up. */
	if (rng_below(r, 2) == 0)
		block = rng_below(r, w->span_blocks < 64 ? w->span_blocks : 64);
	else
		block = rng_below(r, w->span_blocks);
	blocks = 1 + rng_below(r, MAX_BLOCKS_PER_WRITE);
	if (block + blocks > w->span_blocks)
		blocks = w->span_blocks - block;
	sector = block * SECTORS_PER_BLOCK;
	nsect = blocks * SECTORS_PER_BLOCK;
	if (roll < 8 && w->is_blockdev) {
		kind = 'Z';
	} else {
		if (roll < 25) {
			kind = 'P';
			key = (uint32_t)rng_below(r, DUP_KEYS);
		}
		fua = rng_below(r, 1000) < w->dsync_permille;
	}
	wid = atomic_fetch_add(&w->next_wid, 1);
	for (i = 0; i < nsect; i++)
		fill_sector(w->seed, kind, wid, key, sector + i, buf + i * SECTOR);
	log_line(w, "I %u %" PRIu64 " %" PRIu64 " %c %u %d\n", wid, sector, nsect, kind, key,
		 fua ? 1 : 0);
	if (kind == 'Z') {
		range[0] = sector * SECTOR;
		range[1] = nsect * SECTOR;
		if (ioctl(w->fd, BLKZEROOUT, range) < 0)
			err = errno;
	} else {
		done = pwrite(fua ? w->dsync_fd : w->fd, buf, nsect * SECTOR,
			      (off_t)(sector * SECTOR));
		if (done < 0)
			err = errno;
		else if ((uint64_t)done != nsect * SECTOR)
			err = EIO;
	}
	if (err) {
		log_line(w, "E %u %d\n", wid, err);
		atomic_fetch_add(&w->errors, 1);
	} else {
		log_line(w, "A %u\n", wid);
		atomic_fetch_add(&w->writes, 1);
	}
}

static void do_flush(struct workload *w)
{
	uint32_t fid = atomic_fetch_add(&w->next_fid, 1);

	log_line(w, "F %u\n", fid);
	if (fdatasync(w->fd) < 0) {
		log_line(w, "X %u %d\n", fid, errno);
		atomic_fetch_add(&w->errors, 1);
	} else {
		log_line(w, "D %u\n", fid);
		atomic_fetch_add(&w->flushes, 1);
	}
}

static void *writer_main(void *arg)
{
	struct writer *me = arg;
	struct workload *w = me->w;
	struct rng r = { mix64(w->seed ^ (0x1000 + me->index)) };
	uint8_t *buf;

	if (posix_memalign((void **)&buf, BLOCK, (size_t)MAX_BLOCKS_PER_WRITE * BLOCK))
		die("out of memory");
	while (!atomic_load(&w->stop)) {
		if (rng_below(&r, 1000) < w->flush_permille)
			do_flush(w);
		else
			do_write(w, &r, buf);
	}
	free(buf);
	return NULL;
}

/*
 * Asks the host agent for the power cut (request 'powerloss-cut'; the
 * agent's answer appears as powerloss-cut.done); does not wait.
 */
static void request_power_cut(const char *ctl)
{
	char tmp[4096], req[4096];
	const char *cmd = "dpuemu-crash\n";
	int fd;

	snprintf(tmp, sizeof(tmp), "%s/powerloss-cut.req.tmp", ctl);
	snprintf(req, sizeof(req), "%s/powerloss-cut.req", ctl);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("%s: %s", tmp, strerror(errno));
	if (write(fd, cmd, strlen(cmd)) != (ssize_t)strlen(cmd))
		die("%s: write failed", tmp);
	close(fd);
	if (rename(tmp, req) < 0)
		die("rename %s: %s", tmp, strerror(errno));
}

/* Whether the host agent has answered the power-cut request. */
static bool power_cut_confirmed(const char *ctl)
{
	char done[4096];

	snprintf(done, sizeof(done), "%s/powerloss-cut.done", ctl);
	return access(done, F_OK) == 0;
}

static int cmd_write(const char *dev, const char *log_path, uint64_t seed, int argc, char **argv)
{
	unsigned int threads = 4, i, max_seconds = 60;
	bool zero_first = false;
	uint64_t kill_after_ms = 0, span = 0, start, bytes;
	const char *ctl = NULL;
	struct writer *writers;
	struct workload w;
	struct stat st;

	for (i = 0; i + 1 < (unsigned int)argc; i += 2) {
		if (!strcmp(argv[i], "--threads"))
			threads = (unsigned int)strtoul(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--kill-after-ms"))
			kill_after_ms = strtoull(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--ctl"))
			ctl = argv[i + 1];
		else if (!strcmp(argv[i], "--max-seconds"))
			max_seconds = (unsigned int)strtoul(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--span"))
			span = strtoull(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--zero-first"))
			zero_first = !strcmp(argv[i + 1], "1");
		else
			die("unknown option %s", argv[i]);
	}
	if (i != (unsigned int)argc)
		die("option %s needs a value", argv[i]);
	if (threads < 1 || threads > 64)
		die("--threads must be 1-64");

	memset(&w, 0, sizeof(w));
	w.seed = seed;
	w.fd = open(dev, O_RDWR | O_DIRECT);
	w.dsync_fd = open(dev, O_RDWR | O_DIRECT | O_DSYNC);
	if (w.fd < 0 || w.dsync_fd < 0)
		die("%s: %s", dev, strerror(errno));
	if (fstat(w.fd, &st) < 0)
		die("fstat %s: %s", dev, strerror(errno));
	w.is_blockdev = S_ISBLK(st.st_mode);
	bytes = device_bytes(w.fd);
	if (!span || span > bytes)
		span = bytes;
	w.span_blocks = span / BLOCK;
	if (w.span_blocks < 1)
		die("%s is smaller than one block", dev);
	if (zero_first) {
		/* A used device starts from zeroes, made stable before the log. */
		uint64_t range[2] = { 0, w.span_blocks * BLOCK };

		if (!w.is_blockdev || ioctl(w.fd, BLKZEROOUT, range) < 0 || fdatasync(w.fd) < 0)
			die("zeroing %s: %s", dev, strerror(errno));
	}
	w.log_fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
	if (w.log_fd < 0)
		die("%s: %s", log_path, strerror(errno));
	pthread_mutex_init(&w.log_lock, NULL);
	/*
	 * Every flush (and every O_DSYNC write: the accelerator commits the
	 * whole volume for a FUA write) empties the drive's volatile cache,
	 * and a volume's commit takes several fdatasyncs during which the cut
	 * waits: with flushes in 3 % of operations the volumes were committing
	 * nearly all the time and the cut found nothing to tear. So 0.2-2 % of
	 * operations are flushes and 0-2 % of writes O_DSYNC, by the seed.
	 */
	w.flush_permille = 2 + (unsigned int)(mix64(seed ^ 0xf1) % 19);
	w.dsync_permille = (unsigned int)(mix64(seed ^ 0xf2) % 21);
	log_line(&w, "H seed=%" PRIu64 " threads=%u span=%" PRIu64 " flush=%u/1000 dsync=%u/1000\n",
		 seed, threads, w.span_blocks * BLOCK, w.flush_permille, w.dsync_permille);

	writers = calloc(threads, sizeof(*writers));
	if (!writers)
		die("out of memory");
	for (i = 0; i < threads; i++) {
		writers[i].w = &w;
		writers[i].index = i;
		if (pthread_create(&writers[i].thread, NULL, writer_main, &writers[i]))
			die("pthread_create failed");
	}
	start = now_ms();
	if (ctl) {
		while (now_ms() - start < kill_after_ms)
			usleep(10000);
		log_line(&w, "K %" PRIu64 "\n", now_ms() - start);
		request_power_cut(ctl);
		printf("power cut requested after %" PRIu64 " ms: %lu writes, %lu flushes done\n",
		       now_ms() - start, atomic_load(&w.writes), atomic_load(&w.flushes));
		fflush(stdout);
	}
	while (now_ms() - start < (uint64_t)max_seconds * 1000 + kill_after_ms) {
		/*
		 * Once the agent confirms the cut, the device is gone: waiting
		 * longer only keeps a VM whose QEMU did not abort running.
		 */
		if (ctl && power_cut_confirmed(ctl)) {
			printf("the host agent confirmed the power cut after %" PRIu64 " ms\n",
			       now_ms() - start);
			fflush(stdout);
			_exit(3);
		}
		usleep(100000);
	}
	atomic_store(&w.stop, true);
	printf("%lu writes, %lu flushes, %lu errors after %" PRIu64 " ms\n", atomic_load(&w.writes),
	       atomic_load(&w.flushes), atomic_load(&w.errors), now_ms() - start);
	fflush(stdout);
	if (ctl) {
		/*
		 * The VM outlived the cut (QEMU does not always abort): writers
		 * may hang in I/O to the dead device, so leave without joining.
		 */
		fprintf(stderr, "powerloss: still running %u s after the power cut was requested\n",
			max_seconds);
		_exit(3);
	}
	for (i = 0; i < threads; i++)
		pthread_join(writers[i].thread, NULL);
	return 0;
}

/* ---------------------------------------------------------------- check */

#define NOT_ACKED INT64_MAX

struct logged_write {
	bool present;
	bool fua;
	char kind;
	uint32_t key;
	uint64_t sector, nsect;
	int64_t intent_pos, ack_pos;
	bool durable, bad;
};

struct logged_flush {
	int64_t start_pos;
	bool done;
};

struct check {
	uint64_t seed;
	struct logged_write *writes;
	uint32_t nwrites; /* highest wid + 1 */
	struct logged_flush *flushes;
	uint32_t nflushes;
	uint64_t intents, acks, errors, fua_acks, flushes_done, kill_ms, span;
	bool killed;
};

static void *grow(void *p, uint32_t *have, uint32_t want, size_t size)
{
	uint32_t n = *have ? *have : 1024;

	if (want <= *have)
		return p;
	while (n < want)
		n *= 2;
	p = realloc(p, (size_t)n * size);
	if (!p)
		die("out of memory");
	memset((char *)p + (size_t)*have * size, 0, (size_t)(n - *have) * size);
	*have = n;
	return p;
}

static void parse_log(struct check *c, const char *path, uint64_t seed)
{
	uint32_t cap_w = 0, cap_f = 0, id, key;
	uint64_t sector, nsect, log_seed, n;
	FILE *f = fopen(path, "r");
	char line[256], kind;
	bool header = false;
	int64_t pos = 0;
	int fua;

	if (!f)
		die("%s: %s", path, strerror(errno));
	memset(c, 0, sizeof(*c));
	c->seed = seed;
	while (fgets(line, sizeof(line), f)) {
		pos++;
		if (!strchr(line, '\n'))
			break; /* a line cut by the power loss ends the log */
		switch (line[0]) {
		case 'H':
			if (sscanf(line, "H seed=%" SCNu64 " threads=%*u span=%" SCNu64, &log_seed,
				   &c->span) != 2 || log_seed != seed)
				die("%s: header does not match seed %" PRIu64, path, seed);
			header = true;
			break;
		case 'I':
			if (sscanf(line, "I %u %" SCNu64 " %" SCNu64 " %c %u %d", &id, &sector,
				   &nsect, &kind, &key, &fua) != 6)
				die("%s:%" PRId64 ": bad intent line", path, pos);
			c->writes = grow(c->writes, &cap_w, id + 1, sizeof(*c->writes));
			if (id + 1 > c->nwrites)
				c->nwrites = id + 1;
			c->writes[id] = (struct logged_write){
				.present = true, .fua = fua, .kind = kind, .key = key,
				.sector = sector, .nsect = nsect, .intent_pos = pos,
				.ack_pos = NOT_ACKED,
			};
			c->intents++;
			break;
		case 'A':
		case 'E':
			if (sscanf(line + 1, " %u", &id) != 1 || id >= c->nwrites ||
			    !c->writes[id].present)
				die("%s:%" PRId64 ": completion of an unknown write", path, pos);
			if (line[0] == 'A') {
				c->writes[id].ack_pos = pos;
				c->acks++;
				if (c->writes[id].fua)
					c->fua_acks++;
			} else {
				c->errors++;
			}
			break;
		case 'F':
			if (sscanf(line, "F %u", &id) != 1)
				die("%s:%" PRId64 ": bad flush line", path, pos);
			c->flushes = grow(c->flushes, &cap_f, id + 1, sizeof(*c->flushes));
			if (id + 1 > c->nflushes)
				c->nflushes = id + 1;
			c->flushes[id].start_pos = pos;
			break;
		case 'D':
		case 'X':
			if (sscanf(line + 1, " %u", &id) != 1 || id >= c->nflushes ||
			    !c->flushes[id].start_pos)
				die("%s:%" PRId64 ": completion of an unknown flush", path, pos);
			if (line[0] == 'D') {
				c->flushes[id].done = true;
				c->flushes_done++;
			} else {
				c->errors++;
			}
			break;
		case 'K':
			c->killed = sscanf(line, "K %" SCNu64, &c->kill_ms) == 1;
			break;
		default:
			die("%s:%" PRId64 ": unknown line", path, pos);
		}
	}
	fclose(f);
	if (!header)
		die("%s: no header line", path);
	/*
	 * A write is durable when it was acknowledged as O_DSYNC (FUA) or
	 * before a flush that completed was started.
	 */
	int64_t last_flush_start = -1;
	for (n = 0; n < c->nflushes; n++)
		if (c->flushes[n].done && c->flushes[n].start_pos > last_flush_start)
			last_flush_start = c->flushes[n].start_pos;
	for (n = 0; n < c->nwrites; n++) {
		struct logged_write *w = &c->writes[n];

		if (w->present && w->ack_pos != NOT_ACKED)
			w->durable = w->fua || w->ack_pos < last_flush_start;
	}
}

static const char *describe(const uint8_t *data, char *out, size_t len)
{
	struct sector_header h;
	size_t i;

	for (i = 0; i < SECTOR && !data[i]; i++)
		;
	if (i == SECTOR)
		return "zeroes";
	memcpy(&h, data, sizeof(h));
	if (h.magic == MAGIC_RANDOM)
		snprintf(out, len, "write %u's sector %" PRIu64 " (seed %" PRIu64 ")", h.id,
			 h.sector, h.seed);
	else if (h.magic == MAGIC_DUP)
		snprintf(out, len, "duplicate-prone key %u place %" PRIu64 " (seed %" PRIu64 ")",
			 h.id, h.sector, h.seed);
	else
		snprintf(out, len, "unknown bytes %02x%02x%02x%02x%02x%02x%02x%02x...", data[0],
			 data[1], data[2], data[3], data[4], data[5], data[6], data[7]);
	return out;
}

static int cmd_check(const char *dev, const char *log_path, uint64_t seed)
{
	uint64_t bytes, nsectors, s, i, chunk = 1 << 20, sectors_written = 0, bad = 0;
	uint64_t durable = 0, durable_ok = 0, stale = 0, garbage = 0;
	uint32_t *count, *offsets, *list, w;
	uint8_t *buf, expect[SECTOR];
	struct check c;
	int fd;

	parse_log(&c, log_path, seed);
	fd = open(dev, O_RDONLY | O_DIRECT);
	if (fd < 0)
		die("%s: %s", dev, strerror(errno));
	bytes = device_bytes(fd);
	/* The workload's span: the rest of the device is not its business. */
	if (c.span > bytes)
		die("%s is smaller than the logged span (%" PRIu64 " bytes)", dev, c.span);
	bytes = c.span;
	nsectors = bytes / SECTOR;

	/* Per sector, the writes intended for it, in intent (log) order. */
	count = calloc(nsectors + 1, sizeof(*count));
	offsets = calloc(nsectors + 1, sizeof(*offsets));
	if (!count || !offsets)
		die("out of memory");
	uint64_t total = 0;
	for (w = 0; w < c.nwrites; w++) {
		struct logged_write *lw = &c.writes[w];

		if (!lw->present)
			continue;
		if (lw->sector + lw->nsect > nsectors)
			die("write %u reaches past the end of %s", w, dev);
		for (s = lw->sector; s < lw->sector + lw->nsect; s++)
			count[s]++;
		total += lw->nsect;
		if (lw->durable)
			durable++;
	}
	if (total > UINT32_MAX)
		die("log too large");
	for (s = 0; s < nsectors; s++)
		offsets[s + 1] = offsets[s] + count[s];
	list = malloc((total + 1) * sizeof(*list));
	if (!list)
		die("out of memory");
	memset(count, 0, (nsectors + 1) * sizeof(*count));
	/* wids do not follow intent order across threads: sort by intent. */
	uint32_t *order = malloc(((size_t)c.nwrites + 1) * sizeof(*order));
	uint32_t norder = 0;
	if (!order)
		die("out of memory");
	for (w = 0; w < c.nwrites; w++)
		if (c.writes[w].present)
			order[norder++] = w;
	/* Insertion by position: intent positions are distinct line numbers. */
	int64_t maxpos = 0;
	for (w = 0; w < norder; w++)
		if (c.writes[order[w]].intent_pos > maxpos)
			maxpos = c.writes[order[w]].intent_pos;
	uint32_t *by_pos = calloc((size_t)maxpos + 2, sizeof(*by_pos));
	if (!by_pos)
		die("out of memory");
	for (w = 0; w < norder; w++)
		by_pos[c.writes[order[w]].intent_pos] = order[w] + 1;
	for (int64_t p = 0; p <= maxpos; p++) {
		if (!by_pos[p])
			continue;
		w = by_pos[p] - 1;
		for (s = c.writes[w].sector; s < c.writes[w].sector + c.writes[w].nsect; s++)
			list[offsets[s] + count[s]++] = w;
	}
	free(by_pos);
	free(order);

	if (posix_memalign((void **)&buf, BLOCK, chunk))
		die("out of memory");
	int shown = 0;
	for (uint64_t at = 0; at < bytes; at += chunk) {
		uint64_t len = bytes - at < chunk ? bytes - at : chunk;
		ssize_t got = pread(fd, buf, len, (off_t)at);

		if (got < 0 || (uint64_t)got != len)
			die("read %s at %" PRIu64 ": %s", dev, at, got < 0 ? strerror(errno) : "short");
		for (i = 0; i < len / SECTOR; i++) {
			uint8_t *data = buf + i * SECTOR;
			uint32_t from, to, k;
			int64_t newest_durable_intent = -1;
			bool ok = false, zero = true, matches_old = false;

			s = at / SECTOR + i;
			from = offsets[s];
			to = offsets[s + 1];
			if (to > from)
				sectors_written++;
			for (k = from; k < to; k++)
				if (c.writes[list[k]].durable &&
				    c.writes[list[k]].intent_pos > newest_durable_intent)
					newest_durable_intent = c.writes[list[k]].intent_pos;
			for (k = 0; k < SECTOR && zero; k++)
				zero = !data[k];
			/* The initial content (zeroes) counts while no flushed write covers it. */
			if (zero && newest_durable_intent < 0)
				ok = true;
			for (k = from; k < to && !ok; k++) {
				struct logged_write *lw = &c.writes[list[k]];
				bool acceptable = lw->ack_pos > newest_durable_intent;

				fill_sector(seed, lw->kind, list[k], lw->key, s, expect);
				if (memcmp(expect, data, SECTOR))
					continue;
				if (acceptable)
					ok = true;
				else
					matches_old = true;
			}
			if (ok)
				continue;
			bad++;
			if (matches_old || zero)
				stale++;
			else
				garbage++;
			for (k = from; k < to; k++)
				c.writes[list[k]].bad = true;
			if (shown++ < 20) {
				char what[160];
				uint32_t newest = UINT32_MAX;

				for (k = from; k < to; k++)
					if (c.writes[list[k]].intent_pos == newest_durable_intent)
						newest = list[k];
				printf("BAD sector %" PRIu64 ": holds %s; %u write(s) intended for it, "
				       "newest flushed: %s%d\n",
				       s, describe(data, what, sizeof(what)), to - from,
				       newest == UINT32_MAX ? "none" : "write ",
				       newest == UINT32_MAX ? -1 : (int)newest);
			}
		}
	}
	for (w = 0; w < c.nwrites; w++)
		if (c.writes[w].present && c.writes[w].durable && !c.writes[w].bad)
			durable_ok++;
	printf("writes logged %" PRIu64 " (acknowledged %" PRIu64 ", O_DSYNC %" PRIu64
	       ", failed %" PRIu64 "), flushes completed %" PRIu64 "\n",
	       c.intents, c.acks, c.fua_acks, c.errors, c.flushes_done);
	printf("flushed writes %" PRIu64 ", verified %" PRIu64 "\n", durable, durable_ok);
	printf("sectors checked %" PRIu64 " (%" PRIu64 " written at least once), bad %" PRIu64
	       " (flushed data lost or stale %" PRIu64 ", never written %" PRIu64 ")\n",
	       nsectors, sectors_written, bad, stale, garbage);
	printf("summary writes=%" PRIu64 " flushed=%" PRIu64 " verified=%" PRIu64
	       " sectors=%" PRIu64 " bad=%" PRIu64 " kill_ms=%" PRIu64 "\n",
	       c.intents, durable, durable_ok, nsectors, bad, c.kill_ms);
	if (!c.killed) {
		printf("FAIL: the log has no power cut request\n");
		return 1;
	}
	if (c.intents == 0 || durable == 0) {
		printf("FAIL: nothing to check (%" PRIu64 " writes, %" PRIu64 " flushed)\n",
		       c.intents, durable);
		return 1;
	}
	if (bad) {
		printf("FAIL: %" PRIu64 " bad sector(s)\n", bad);
		return 1;
	}
	return 0;
}

static uint64_t parse_seed(const char *text)
{
	char *end;
	uint64_t v;

	errno = 0;
	v = strtoull(text, &end, 10);
	if (errno || *end || !*text || text[0] == '-')
		die("bad seed '%s'", text);
	return v;
}

int main(int argc, char **argv)
{
	if (argc >= 5 && !strcmp(argv[1], "write"))
		return cmd_write(argv[2], argv[3], parse_seed(argv[4]), argc - 5, argv + 5);
	if (argc == 5 && !strcmp(argv[1], "check"))
		return cmd_check(argv[2], argv[3], parse_seed(argv[4]));
	fprintf(stderr, "usage: powerloss write DEV LOG SEED [--threads N] [--kill-after-ms MS]\n"
			"                       [--ctl DIR] [--max-seconds S] [--span BYTES]\n"
			"                       [--zero-first 1]\n"
			"       powerloss check DEV LOG SEED\n");
	return 2;
}
