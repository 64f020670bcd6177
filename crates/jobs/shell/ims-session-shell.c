/* The login shell of jailed SSH sessions (see crates/jobs/src/session.rs).
 *
 * sshd needs CAP_SYS_CHROOT for ChrootDirectory, and a session inherits sshd's capabilities, so
 * root in a jailed session could chroot(2) out of the image root. sshd runs this program, chrooted
 * and as root, in place of the user's shell: it removes CAP_SYS_CHROOT and CAP_SETPCAP from the
 * effective, permitted and inheritable sets (and from the bounding set when it may), clears the
 * ambient set, makes sure no_new_privs is set (so no execve can give the capabilities back), then
 * runs the image's own shell (/bin/bash, else /bin/sh) with sshd's arguments: a login shell
 * stays one ("-bash"), "-c COMMAND" is passed on.
 *
 * It runs inside any image root (any C library, none at all), so it is linked statically.
 */
#include <errno.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static const int dropped[] = {CAP_SYS_CHROOT, CAP_SETPCAP};

static void die(const char *what)
{
	fprintf(stderr, "ims-session-shell: %s: %s\n", what, strerror(errno));
	exit(126);
}

int main(int argc, char **argv)
{
	struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct data[2];
	size_t i;

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		die("no_new_privs");
	/* Needs CAP_SETPCAP, which sessions normally lack already: then permitted is enough. */
	for (i = 0; i < sizeof dropped / sizeof dropped[0]; i++)
		if (prctl(PR_CAPBSET_DROP, dropped[i], 0, 0, 0) != 0 && errno != EPERM)
			die("bounding set");
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
		die("ambient set");
	if (syscall(SYS_capget, &head, data) != 0)
		die("capget");
	for (i = 0; i < sizeof dropped / sizeof dropped[0]; i++) {
		unsigned int word = dropped[i] / 32, bit = 1u << (dropped[i] % 32);
		data[word].effective &= ~bit;
		data[word].permitted &= ~bit;
		data[word].inheritable &= ~bit;
	}
	if (syscall(SYS_capset, &head, data) != 0)
		die("capset");
	if (syscall(SYS_capget, &head, data) != 0)
		die("capget");
	for (i = 0; i < sizeof dropped / sizeof dropped[0]; i++)
		if (data[dropped[i] / 32].permitted & (1u << (dropped[i] % 32))) {
			errno = EPERM;
			die("capability still permitted");
		}

	const char *shell = access("/bin/bash", X_OK) == 0 ? "/bin/bash" : "/bin/sh";
	const char *name = strrchr(shell, '/') + 1;
	char login[16];
	char **args = calloc((size_t)argc + 1, sizeof *args);
	if (!args)
		die("memory");
	/* sshd starts a login shell as "-NAME". */
	if (argc > 0 && argv[0][0] == '-') {
		snprintf(login, sizeof login, "-%s", name);
		args[0] = login;
	} else {
		args[0] = (char *)name;
	}
	for (int a = 1; a < argc; a++)
		args[a] = argv[a];
	execv(shell, args);
	die(shell);
	return 126;
}
