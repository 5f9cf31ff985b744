"""The Azure target: fixed VHDs pushed as page blobs, managed images and Compute Gallery
versions made from them, and virtual machines (with their NICs and OS disks) for clusters."""
