"""A toy semantic-segmentation task, written as a plug-in would be: everything it needs is in this
package, and nothing in botnet names it (test_toyseg checks both)."""
