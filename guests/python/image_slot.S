/*
 * The file system image slot of the dynamic Python guest: instead of linking its image in (as
 * the static guest does), the dynamic guest finds it at this fixed address, where the host's
 * loader places the image file it is given (snapcell/guest/elf.py, "sc_image_slot": the
 * standard library, or an image with packages: docs/code-sandboxes.md "Packages and images").
 * python_guest.c mounts [sc_python_image, sc_python_image_end); the image's header gives its
 * real length.
 */
    .globl sc_python_image, sc_python_image_end, sc_image_slot, sc_image_slot_end
    .set sc_image_slot, 0x11800000   /* above the library region and musl's dynamic linker */
    .set sc_image_slot_end, 0x11800000 + (448 << 20)
    .set sc_python_image, sc_image_slot
    .set sc_python_image_end, sc_image_slot_end
    .section .note.GNU-stack, "", @progbits
