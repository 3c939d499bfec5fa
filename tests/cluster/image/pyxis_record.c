/*
 * Test-only SPANK plugin: makes the real srun accept pyxis's --container-* options and records,
 * on the node that runs each step, the options that step was given. pyxis and enroot cannot be
 * installed where the tests run; this lets them check the flags cluster/slurm/gemma4.sbatch passes
 * to every step. It runs nothing in a container: the step runs on the node itself.
 *
 * plugstack.conf:  required /path/pyxis_record.so <record directory>
 * Each step with at least one option appends one line to <record directory>/<job id>.steps:
 *   host=<node> step=<step id> --container-image=... --container-mounts=... ...
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <slurm/slurm.h>
#include <slurm/spank.h>

SPANK_PLUGIN(pyxis_record, 1);

/* pyxis's options (its README, "Usage"). */
static const char *names[] = {
	"container-image", "container-mounts", "container-workdir", "container-name",
	"container-save", "container-env", "container-mount-home", "no-container-mount-home",
	"container-remap-root", "no-container-remap-root", "container-entrypoint",
	"no-container-entrypoint", "container-entrypoint-log", "container-writable",
	"container-readonly",
};
#define NOPTS (sizeof(names) / sizeof(names[0]))
static const int has_arg[NOPTS] = {1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0};

static char values[NOPTS][4096];
static int given[NOPTS];
static char record_dir[1024];

static int remember(int val, const char *optarg, int remote)
{
	(void)remote;
	if (val < 0 || val >= (int)NOPTS)
		return -1;
	given[val] = 1;
	snprintf(values[val], sizeof(values[val]), "%s", optarg ? optarg : "");
	return 0;
}

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	if (ac > 0)
		snprintf(record_dir, sizeof(record_dir), "%s", av[0]);
	for (int i = 0; i < (int)NOPTS; i++) {
		struct spank_option opt = {
			(char *)names[i], has_arg[i] ? "VALUE" : NULL,
			"pyxis option, recorded by the test plugin", has_arg[i], i, remember,
		};
		if (spank_option_register(sp, &opt) != ESPANK_SUCCESS) {
			slurm_error("pyxis_record: cannot register --%s", names[i]);
			return -1;
		}
	}
	return 0;
}

int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
	(void)ac;
	(void)av;
	if (!spank_remote(sp) || !record_dir[0])
		return 0;
	int any = 0;
	for (int i = 0; i < (int)NOPTS; i++)
		any |= given[i];
	if (!any)
		return 0;
	uint32_t job = 0, step = 0;
	spank_get_item(sp, S_JOB_ID, &job);
	spank_get_item(sp, S_JOB_STEPID, &step);
	char host[256] = "";
	gethostname(host, sizeof(host) - 1);
	char line[NOPTS * 4200];
	int n = snprintf(line, sizeof(line), "host=%s step=%u", host, step);
	for (int i = 0; i < (int)NOPTS && n < (int)sizeof(line); i++) {
		if (!given[i])
			continue;
		if (has_arg[i])
			n += snprintf(line + n, sizeof(line) - n, " --%s=%s", names[i], values[i]);
		else
			n += snprintf(line + n, sizeof(line) - n, " --%s", names[i]);
	}
	if (n >= (int)sizeof(line) - 1)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	char path[1200];
	snprintf(path, sizeof(path), "%s/%u.steps", record_dir, job);
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd < 0) {
		slurm_error("pyxis_record: cannot open %s: %s", path, strerror(errno));
		return -1;
	}
	ssize_t w = write(fd, line, n); /* one write: lines of concurrent steps do not interleave */
	close(fd);
	return w == n ? 0 : -1;
}
